"""One gate policy: API, SDK, CLI, table and engine agree on fields, defaults and limits."""

from __future__ import annotations

import inspect

import pytest

from ferry.cli import rollout_ops
from ferry.protocol.errors import MalformedError
from ferry.protocol.gates import LIMITS, GatePolicy
from ferry.server.rollouts.schemas import Gates, RolloutCreate
from ferry.server.rollouts.tables import Rollout


def test_the_api_schema_the_table_and_the_cli_take_their_defaults_from_the_policy() -> None:
    policy = GatePolicy()
    assert Gates().model_dump() == policy.to_dict()
    body = RolloutCreate(namespace="ns", model="m", version="1")
    assert {name: getattr(body, name) for name in GatePolicy.names()} == policy.to_dict()
    assert (
        Rollout(
            namespace="ns",
            model="ns/m",
            model_id=1,
            version=1,
            manifest_sha256="0" * 64,
            created_by="t",
            created_at="t",
            updated_at="t",
            **policy.to_dict(),
        ).gates()
        == policy
    )
    options = inspect.signature(rollout_ops.rollout_create).parameters
    assert options["max_failure_pct"].default == policy.max_failure_pct == 5
    assert options["timeout"].default == policy.in_progress_timeout_s


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("min_success_pct", 101),
        ("max_failure_pct", -1),
        ("max_retries", 21),
        ("in_progress_timeout_s", 0),
        ("bake_s", True),
        ("max_failures", 1.5),
    ],
)
def test_a_value_out_of_range_never_makes_a_policy(name: str, value: object) -> None:
    with pytest.raises(MalformedError, match=name):
        GatePolicy(**{name: value})  # type: ignore[arg-type]


def test_the_api_refuses_what_the_policy_refuses() -> None:
    for name, (low, high) in LIMITS.items():
        with pytest.raises(ValueError, match=name):
            Gates(**{name: high + 1})
        assert getattr(Gates(**{name: low}), name) == low


def test_unknown_gate_settings_are_refused() -> None:
    with pytest.raises(MalformedError, match="max_failure_percent"):
        GatePolicy.from_dict({"max_failure_percent": 3})


def test_the_failure_limit_counts_and_percentages() -> None:
    assert not GatePolicy(max_failure_pct=5).failure_limit_crossed(5, 100)
    assert GatePolicy(max_failure_pct=5).failure_limit_crossed(6, 100)
    assert GatePolicy(max_failures=2, max_failure_pct=None).failure_limit_crossed(3, 1000)
    assert not GatePolicy(max_failures=None, max_failure_pct=None).failure_limit_crossed(99, 100)


def test_a_gate_passes_only_after_the_bake_with_enough_committed() -> None:
    policy = GatePolicy(min_success_pct=90)
    assert policy.passes(9, 10, bake_left_s=0)
    assert not policy.passes(9, 10, bake_left_s=1)
    assert not policy.passes(8, 10, bake_left_s=0)


def test_a_gate_that_cannot_pass_any_more_is_told_apart_from_one_still_waiting() -> None:
    policy = GatePolicy(min_success_pct=100)
    assert not policy.unreachable(committed=2, failures=0, cohort=3)  # one still under way
    assert policy.unreachable(committed=2, failures=1, cohort=3)
    assert not GatePolicy(min_success_pct=60).unreachable(committed=2, failures=1, cohort=3)


def test_each_failure_type_has_its_own_abort_limit() -> None:
    policy = GatePolicy(max_timed_out_pct=10)
    assert policy.abort_reason({"timed_out": 1, "failed": 5}, 10) is None  # 10 % is allowed
    reason = policy.abort_reason({"timed_out": 2}, 10)
    assert reason is not None and "2 of 10 devices timed out" in reason
    assert GatePolicy().abort_reason({"failed": 10}, 10) is None  # no criteria by default
