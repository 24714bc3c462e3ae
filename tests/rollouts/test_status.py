"""Sync status per rollout and wave, fleet-wide version distribution, restarts, the engine task."""

from __future__ import annotations

import time
from pathlib import Path

from ferry.server.fleet.runtime import FleetRuntime, FleetSettings
from tests.fleet.harness import API, Fleet, build_fleet
from tests.rollouts.helpers import by_wave, commit, fail


def test_rollout_status_counts_by_wave_and_state(fleet: Fleet) -> None:
    agents = fleet.devices(16)
    version = fleet.version()
    rollout = fleet.rollout(
        version=str(version), waves=[50, 100], bake_s=600, min_success_pct=50, max_failure_pct=50
    )
    waves = by_wave(rollout, agents)
    first = waves[0]
    commit(fleet, first[:2], version, rollout["id"])
    fail(fleet, first[2:3], version, rollout["id"])
    fleet.report(first[3], "staged", to_version=version, rollout_id=rollout["id"])
    fleet.report(first[4], "verifying", to_version=version, rollout_id=rollout["id"])
    fleet.clock.advance(120)
    status = fleet.status(rollout["id"])
    counts = status["waves"][0]["counts"]
    assert counts == {
        "pending": len(first) - 5,
        "downloading": 1,
        "installing": 1,
        "committed": 2,
        "failed": 1,
        "rolled_back": 0,
        "timed_out": 0,
    }
    assert status["waves"][1]["total"] == len(waves[1])
    assert status["waves"][0]["success_rate"] == round(200 / len(first), 2)
    assert status["time_in_wave_s"] == 120
    gate = status["gate"]
    assert (gate["status"], gate["bake_left_s"], gate["failures"]) == ("waiting", 480, 1)
    assert status["devices"] == len(agents) and status["totals"]["committed"] == 2


def test_fleet_status_shows_installed_versions_per_model(fleet: Fleet) -> None:
    agents = fleet.devices(5)
    v1 = fleet.version()
    rollout = fleet.rollout(version=str(v1), waves=[100])
    commit(fleet, agents[:3], v1, rollout["id"])
    fleet.client.post(f"{API}/devices/{agents[4].device_id}/revoke", headers=fleet.admin)
    fleet.clock.advance(301)
    fleet.desired(agents[0])
    body = fleet.client.get(f"{API}/fleet/status", headers=fleet.admin).json()
    assert (body["devices"], body["revoked"], body["online"]) == (4, 1, 1)
    assert body["models"] == [
        {"model": "vision/det", "slot": "main", "versions": {str(v1): 3}, "without_version": {}}
    ]
    fleet.namespace("audio")
    audio_viewer = fleet.token("viewer", ["audio"])
    scoped = fleet.client.get(f"{API}/fleet/status", headers=audio_viewer).json()
    assert scoped["devices"] == 0 and scoped["models"] == []
    assert (
        fleet.client.get(
            f"{API}/fleet/status", params={"namespace": "vision"}, headers=audio_viewer
        ).status_code
        == 403
    )
    assert (
        fleet.client.get(
            f"{API}/fleet/status", params={"online_window_s": 0}, headers=fleet.admin
        ).status_code
        == 422
    )
    assert fleet.client.get(f"{API}/fleet/status", headers=agents[0].headers).status_code == 403


def test_gate_evaluation_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    fleet, client = build_fleet(data)
    with client:
        fleet.namespace("vision")
        fleet.model("vision", "det")
        agents = fleet.devices(16)  # 16: an empty first wave once in 65,000 runs
        version = fleet.version()
        rollout = fleet.rollout(version=str(version), waves=[50, 100], bake_s=60)
        commit(fleet, by_wave(rollout, agents)[0], version, rollout["id"])
    restarted, client = build_fleet(data)
    restarted.clock.now = fleet.clock.now
    with client:
        restarted.clock.advance(60)
        restarted.tick()
        shown = restarted.show(rollout["id"])
        assert (shown["state"], shown["wave"]) == ("running", 2)


def test_the_lifespan_task_evaluates_gates_on_its_own(tmp_path: Path) -> None:
    fleet, client = build_fleet(tmp_path / "data")
    fleet.app.state.fleet = FleetRuntime(
        settings=FleetSettings(rollout_tick_s=0.05), clock=fleet.clock, notifier=fleet.notifier
    )
    with client:
        fleet.namespace("vision")
        fleet.model("vision", "det")
        agents = fleet.devices(4)
        version = fleet.version()
        rollout = fleet.rollout(version=str(version), waves=[100])
        commit(fleet, agents, version, rollout["id"])
        deadline = time.monotonic() + 20
        while fleet.show(rollout["id"])["state"] != "completed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fleet.show(rollout["id"])["state"] == "completed"
