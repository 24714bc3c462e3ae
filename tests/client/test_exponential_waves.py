"""Exponential wave rates: start small, grow by a factor, never add more than a cap."""

from __future__ import annotations

import pytest

from ferry.cli.fleet_cmds import parse_waves
from ferry.client import InputError
from ferry.client._fleet import exponential_waves


@pytest.mark.parametrize(
    ("start", "factor", "cap", "waves"),
    [
        (1, 3, None, [1, 3, 9, 27, 81, 100]),
        (1, 3, 20, [1, 3, 9, 27, 47, 67, 87, 100]),
        (5, 2, None, [5, 10, 20, 40, 80, 100]),
        (100, 2, None, [100]),
    ],
)
def test_waves_grow_by_the_factor_up_to_the_cap_and_end_at_100(
    start: int, factor: float, cap: int | None, waves: list[int]
) -> None:
    assert exponential_waves(start, factor, cap) == waves


def test_a_rate_that_needs_more_than_20_waves_is_refused_with_the_way_out() -> None:
    with pytest.raises(ValueError, match="at most 20"):
        exponential_waves(1, 1.01, 50)


def test_the_waves_option_takes_exp_and_refuses_nonsense_as_bad_input() -> None:
    assert parse_waves("exp:1,2,25") == [1, 2, 4, 8, 16, 32, 57, 82, 100]
    assert parse_waves("1,10,100") == [1, 10, 100]
    for bad in ("exp:1,1", "exp:0,2", "exp:1", "exp:1.5,2", "exp:1,2,3,4", "1,x"):
        with pytest.raises(InputError, match="--waves"):
            parse_waves(bad)
