"""An explicit "no limit" (null) is stored as no limit, not as the default percentage."""

from __future__ import annotations

from tests.fleet.harness import Fleet


def test_a_null_failure_limit_is_kept_null(fleet: Fleet) -> None:
    fleet.devices(2)
    rollout = fleet.rollout(version=str(fleet.version()), waves=[100], max_failure_pct=None)
    assert fleet.show(rollout["id"])["gates"]["max_failure_pct"] is None
