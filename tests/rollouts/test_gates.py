"""Gates: bake time and success rate advance a wave; the failure limit halts; silent
devices time out; failed devices are retried with backoff. Time is frozen, never slept."""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from ferry.server.core.db import session_scope
from ferry.server.webhooks.tables import EventOutbox
from tests.fleet.harness import API, Agent, Fleet
from tests.rollouts.helpers import by_wave, commit, fail, target


def _start(
    fleet: Fleet, n: int = 20, **gates: Any
) -> tuple[dict[str, Any], dict[int, list[Agent]], int]:
    agents = fleet.devices(n)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[50, 100], **gates)
    waves = by_wave(rollout, agents)
    assert waves.get(0) and waves.get(1), "both waves need devices for these tests"
    return rollout, waves, version


def test_wave_advances_only_after_bake_time_and_success_rate(fleet: Fleet) -> None:
    rollout, waves, version = _start(fleet, bake_s=600, min_success_pct=100)
    commit(fleet, waves[0][:-1], version, rollout["id"])
    fleet.clock.advance(600)
    fleet.tick()
    assert fleet.show(rollout["id"])["wave"] == 1, "one device of the first wave has not committed"
    commit(fleet, waves[0][-1:], version, rollout["id"])
    fleet.clock.advance(-1)
    fleet.tick()
    assert fleet.show(rollout["id"])["wave"] == 1
    fleet.clock.advance(1)
    assert fleet.status(rollout["id"])["gate"]["status"] == "passing"
    fleet.tick()
    shown = fleet.show(rollout["id"])
    assert (shown["state"], shown["wave"]) == ("running", 2)
    assert target(fleet, waves[1][0]) == (version, False)
    fleet.clock.advance(600)
    fleet.tick()
    assert fleet.show(rollout["id"])["state"] == "running", "the second wave has not committed"
    commit(fleet, waves[1], version, rollout["id"])
    fleet.tick()
    assert fleet.show(rollout["id"])["state"] == "completed"


def test_downloaded_is_not_success(fleet: Fleet) -> None:
    rollout, waves, version = _start(fleet, min_success_pct=100)
    for agent in waves[0]:
        fleet.report(agent, "staged", to_version=version, rollout_id=rollout["id"])
    fleet.tick()
    status = fleet.status(rollout["id"])
    assert status["waves"][0]["counts"]["installing"] == len(waves[0])
    assert status["rollout"]["wave"] == 1


def test_failure_limit_halts_and_stops_new_devices(fleet: Fleet) -> None:
    rollout, waves, version = _start(fleet, max_failures=0, max_failure_pct=None)
    commit(fleet, waves[0][1:], version, rollout["id"])
    fail(fleet, waves[0][:1], version, rollout["id"])
    fleet.tick()
    shown = fleet.show(rollout["id"])
    assert shown["state"] == "halted" and "failure limit" in shown["reason"]
    assert target(fleet, waves[0][1]) == (version, False), "committed devices keep it"
    assert target(fleet, waves[0][0]) is None, "the failed device is not pushed again"
    assert all(target(fleet, a) is None for a in waves[1]), "no new device takes it"
    with session_scope(fleet.app.state.ctx.engine) as session:
        states = [
            e.payload["state"]
            for e in session.exec(select(EventOutbox)).all()
            if e.event_type == "rollout.state_changed"
        ]
    assert states == ["scheduled", "running", "halted"]
    before = fleet.desired(waves[0][0])["signed"]["sequence"]
    fleet.act(rollout["id"], "resume")  # the failed device gets one more try
    assert fleet.desired(waves[0][0])["signed"]["sequence"] == before + 1
    assert target(fleet, waves[0][0]) == (version, False)
    commit(fleet, waves[0][:1], version, rollout["id"])
    fleet.tick()
    assert fleet.show(rollout["id"])["wave"] == 2


def test_failure_percentage_limit(fleet: Fleet) -> None:
    rollout, waves, version = _start(fleet, max_failure_pct=25, min_success_pct=75, bake_s=3600)
    cohort = waves[0]
    quarter = len(cohort) // 4  # at most 25 %: tolerated
    fail(fleet, cohort[:quarter], version, rollout["id"])
    fleet.tick()
    assert fleet.show(rollout["id"])["state"] == "running"
    fail(fleet, cohort[quarter : quarter + 1], version, rollout["id"], state="rolled_back")
    fleet.tick()
    assert fleet.show(rollout["id"])["state"] == "halted"


def test_silent_device_times_out_and_counts_as_failure(fleet: Fleet) -> None:
    rollout, waves, version = _start(
        fleet, in_progress_timeout_s=900, max_failures=0, max_failure_pct=None
    )
    commit(fleet, waves[0][1:], version, rollout["id"])
    fleet.report(waves[0][0], "downloading", to_version=version, rollout_id=rollout["id"])
    fleet.clock.advance(899)
    fleet.tick()
    status = fleet.status(rollout["id"])
    assert (
        status["waves"][0]["counts"]["downloading"] == 1 and status["rollout"]["state"] == "running"
    )
    fleet.clock.advance(2)
    fleet.tick()
    status = fleet.status(rollout["id"])
    assert status["waves"][0]["counts"]["timed_out"] == 1
    assert status["rollout"]["state"] == "halted"


def test_failed_devices_are_retried_with_backoff(fleet: Fleet) -> None:
    rollout, waves, version = _start(
        fleet, max_retries=2, retry_backoff_s=60, max_failures=0, max_failure_pct=None
    )
    flaky = waves[0][0]
    commit(fleet, waves[0][1:], version, rollout["id"])
    seq = fleet.desired(flaky)["signed"]["sequence"]
    fail(fleet, [flaky], version, rollout["id"])
    fleet.clock.advance(59)
    fleet.tick()
    assert fleet.status(rollout["id"])["waves"][0]["counts"]["failed"] == 1
    fleet.clock.advance(1)
    fleet.tick()  # first retry after 60 s
    assert fleet.status(rollout["id"])["waves"][0]["counts"]["pending"] == 1
    retry = fleet.desired(flaky)["signed"]
    assert retry["sequence"] == seq + 1 and retry["slots"]["main"]["version"] == version
    fail(fleet, [flaky], version, rollout["id"])
    fleet.clock.advance(119)
    fleet.tick()
    assert fleet.show(rollout["id"])["state"] == "running"
    fleet.clock.advance(1)
    fleet.tick()  # second retry after 120 s
    fail(fleet, [flaky], version, rollout["id"])
    fleet.tick()  # no retry left: a failure for the gate
    assert fleet.show(rollout["id"])["state"] == "halted"


def test_scheduled_rollout_starts_at_its_start_time(fleet: Fleet) -> None:
    fleet.devices(3)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[100], start_at="2026-11-25T04:00:00Z")
    assert rollout["state"] == "scheduled" and fleet.notifier.calls == []
    fleet.clock.advance(3599)
    fleet.tick()
    assert fleet.show(rollout["id"])["state"] == "scheduled"
    fleet.clock.advance(1)
    fleet.tick()
    assert fleet.show(rollout["id"])["state"] == "running"
    assert fleet.notifier.calls == [(["all"], rollout["id"])]


def test_auto_rollback_on_halt(fleet: Fleet) -> None:
    agents = fleet.devices(10)
    v1 = fleet.version()
    first = fleet.rollout(version=str(v1), waves=[100])
    commit(fleet, agents, v1, first["id"])
    fleet.tick()
    v2 = fleet.version()
    second = fleet.rollout(
        version=str(v2), waves=[100], auto_rollback=True, max_failures=0, max_failure_pct=None
    )
    commit(fleet, agents[1:], v2, second["id"], from_version=v1)
    fail(fleet, agents[:1], v2, second["id"])
    fleet.tick()
    shown = fleet.show(second["id"])
    assert shown["state"] == "rolled_back" and "automatic" in shown["reason"]
    assert target(fleet, agents[1]) == (v1, True)


def test_a_revoked_device_no_longer_holds_its_wave_back(fleet: Fleet) -> None:
    rollout, waves, version = _start(fleet, min_success_pct=100)
    commit(fleet, waves[0][1:], version, rollout["id"])
    fleet.tick()
    assert fleet.show(rollout["id"])["wave"] == 1
    fleet.client.post(f"/api/v1/devices/{waves[0][0].device_id}/revoke", headers=fleet.admin)
    fleet.tick()
    assert fleet.show(rollout["id"])["wave"] == 2


def test_reports_arriving_out_of_order_within_a_second_never_undo_a_commit(fleet: Fleet) -> None:
    """The terminal report may arrive over HTTP before the earlier ones over MQTT."""
    rollout, waves, version = _start(fleet)
    agent = waves[0][0]
    for state in ("committed", "probing", "switching", "downloading"):
        fleet.report(agent, state, to_version=version, rollout_id=rollout["id"])
    status = fleet.status(rollout["id"])
    assert status["totals"]["committed"] == 1 and status["totals"]["installing"] == 0
    fleet.clock.advance(5)  # a later report (a retry, a new attempt) still moves it
    fleet.report(agent, "downloading", to_version=version, rollout_id=rollout["id"])
    assert fleet.status(rollout["id"])["totals"]["downloading"] == 1


def _edit(fleet: Fleet, rollout_id: str, expect: int = 200, **changes: object) -> Any:
    r = fleet.client.patch(f"{API}/rollouts/{rollout_id}/gates", json=changes, headers=fleet.admin)
    assert r.status_code == expect, r.text
    return r.json()


def test_editing_the_gates_of_a_running_rollout_applies_at_the_next_tick_and_is_audited(
    fleet: Fleet,
) -> None:
    rollout, waves, version = _start(fleet, bake_s=3600, min_success_pct=100)
    commit(fleet, waves[0], version, rollout["id"])
    fleet.tick()
    assert fleet.show(rollout["id"])["wave"] == 1, "the first wave still bakes for an hour"
    answer = _edit(fleet, rollout["id"], bake_s=0, max_failures=None)
    assert answer["changed"] == {"bake_s": {"from": 3600, "to": 0}}
    assert answer["gates"]["bake_s"] == 0 and answer["gates"]["min_success_pct"] == 100
    fleet.tick()
    assert fleet.show(rollout["id"])["wave"] == 2, "the edited gate passes at once"
    entries = fleet.client.get(f"{API}/audit", headers=fleet.admin).json()
    [entry] = [e for e in entries if e["action"] == "rollout.gates_changed"]
    assert entry["target"] == rollout["id"] and entry["actor"]
    assert entry["details"]["changed"] == {"bake_s": {"from": 3600, "to": 0}}


def test_gates_of_an_ended_rollout_or_out_of_range_values_are_refused(fleet: Fleet) -> None:
    rollout, _, _ = _start(fleet)
    bad = _edit(fleet, rollout["id"], expect=422, min_success_pct=101)
    assert "min_success_pct" in str(bad["error"]["details"])
    _edit(fleet, rollout["id"], expect=422, bake_s=None)
    _edit(fleet, rollout["id"], expect=422, speed=3)
    fleet.act(rollout["id"], "cancel")
    ended = _edit(fleet, rollout["id"], expect=409, bake_s=10)
    assert "cancelled rollout's gates cannot change" in ended["error"]["message"]


def test_an_abort_criterion_per_failure_type_halts_on_its_own_type_only(fleet: Fleet) -> None:
    """AWS IoT Jobs-style abort criteria: rolled-back devices have their own limit."""
    rollout, waves, version = _start(
        fleet, max_failure_pct=None, min_success_pct=50, max_rolled_back_pct=10, bake_s=3600
    )
    cohort = waves[0]
    fail(fleet, cohort[:1], version, rollout["id"], state="failed")  # another type: ignored
    fleet.tick()
    assert fleet.show(rollout["id"])["state"] == "running", fleet.show(rollout["id"])["reason"]
    over = len(cohort) // 10 + 1  # just past 10 % of the first wave
    fail(fleet, cohort[1 : 1 + over], version, rollout["id"], state="rolled_back")
    fleet.tick()
    shown = fleet.show(rollout["id"])
    assert shown["state"] == "halted"
    assert "abort criterion" in shown["reason"] and "rolled back" in shown["reason"]


def test_abort_criteria_are_validated_like_every_gate(fleet: Fleet) -> None:
    fleet.devices(2)
    version = fleet.version()
    refused = fleet.rollout(expect=422, version=str(version), max_timed_out_pct=101)
    assert "max_timed_out_pct" in str(refused)
