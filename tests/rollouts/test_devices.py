"""`GET /rollouts/{id}/devices`: which devices of a rollout are where, since when, and why."""

from __future__ import annotations

from typing import Any

from ferry.protocol.timefmt import format_time
from tests.fleet.harness import API, Agent, Fleet, report_doc
from tests.rollouts.helpers import by_wave, commit, target

PROBE_OUTPUT = "onnxruntime: output 'scores' has shape [1, 4], expected [1, 3]"


def devices(fleet: Fleet, rollout_id: str, expect: int = 200, **params: Any) -> Any:
    r = fleet.client.get(f"{API}/rollouts/{rollout_id}/devices", params=params, headers=fleet.admin)
    assert r.status_code == expect, r.text
    return r.json()


def probe_fails(fleet: Fleet, agent: Agent, version: int, rollout_id: str | None) -> None:
    """The agent's own report of a failed probe: it went back and says why, in ``detail``."""
    doc = report_doc(
        agent.device_id,
        "rolled_back",
        to_version=version,
        from_version=None,
        rollout_id=rollout_id,
        at=format_time(fleet.clock.now),
        error_code="probe_failed",
    )
    doc["detail"] = PROBE_OUTPUT
    r = fleet.client.post(f"{API}/device/status", json={"reports": [doc]}, headers=agent.headers)
    assert r.status_code == 200, r.text


def test_a_probe_failure_is_listed_with_the_probe_output(fleet: Fleet) -> None:
    agents = fleet.devices(6)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[100], bake_s=600)
    commit(fleet, agents[:4], version, rollout["id"])
    fleet.clock.advance(30)
    probe_fails(fleet, agents[4], version, rollout["id"])
    fleet.clock.advance(45)

    page = devices(fleet, rollout["id"], state="failed")
    assert page["total"] == 1 and page["next_cursor"] is None
    [row] = page["devices"]
    assert (row["device_id"], row["state"], row["error_code"]) == (
        agents[4].device_id,
        "rolled_back",
        "probe_failed",
    )
    assert row["error_message"] == PROBE_OUTPUT
    assert (row["wave"], row["time_in_state_s"], row["hardware"]) == (1, 45, "x86_64")
    assert row["last_report_at"] is not None

    pending = devices(fleet, rollout["id"], state="pending")
    assert [d["device_id"] for d in pending["devices"]] == [agents[5].device_id]
    assert pending["devices"][0]["error_message"] is None
    assert pending["devices"][0]["last_report_at"] is None
    committed = devices(fleet, rollout["id"], state="committed")
    assert committed["total"] == 4 and all(d["error_code"] is None for d in committed["devices"])


def test_a_report_without_rollout_id_still_explains_the_failure(fleet: Fleet) -> None:
    agents = fleet.devices(2)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[100])
    probe_fails(fleet, agents[0], version, None)
    [row] = devices(fleet, rollout["id"], state="failed")["devices"]
    assert row["error_message"] == PROBE_OUTPUT


def test_a_silent_device_is_timed_out_with_the_servers_words(fleet: Fleet) -> None:
    agents = fleet.devices(2)
    version = fleet.version()
    rollout = fleet.rollout(
        version=str(version), waves=[100], in_progress_timeout_s=120, bake_s=3600
    )
    fleet.report(agents[0], "downloading", to_version=version, rollout_id=rollout["id"])
    fleet.clock.advance(121)
    fleet.tick()
    rows = {r["device_id"]: r for r in devices(fleet, rollout["id"], state="timed_out")["devices"]}
    silent, never = rows[agents[0].device_id], rows[agents[1].device_id]
    assert silent["error_code"] == "timed_out"
    assert "no report for 120 s" in silent["error_message"]
    assert never["error_code"] == "never_started"
    assert "never started the update within 120 s" in never["error_message"]


def test_wave_filter_uses_the_public_one_based_wave_number(fleet: Fleet) -> None:
    agents = fleet.devices(20)
    rollout = fleet.rollout(version=str(fleet.version()), waves=[50, 100])
    waves = by_wave(rollout, agents)
    first = devices(fleet, rollout["id"], wave=1, limit=1000)
    assert sorted(d["device_id"] for d in first["devices"]) == sorted(a.device_id for a in waves[0])
    assert {d["wave"] for d in first["devices"]} == {1}
    second = devices(fleet, rollout["id"], wave=2, limit=1000)
    assert second["total"] == len(waves[1]) and {d["wave"] for d in second["devices"]} == {2}


def test_paging_with_the_cursor_lists_every_device_once(fleet: Fleet) -> None:
    agents = fleet.devices(23)
    rollout = fleet.rollout(version=str(fleet.version()), waves=[100])
    seen: list[str] = []
    cursor = None
    while True:
        page = devices(fleet, rollout["id"], limit=5, **({"cursor": cursor} if cursor else {}))
        assert page["total"] == 23 and len(page["devices"]) <= 5
        seen += [d["device_id"] for d in page["devices"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(a.device_id for a in agents)


def test_a_typo_in_state_or_a_wave_the_rollout_lacks_is_a_precise_422(fleet: Fleet) -> None:
    fleet.devices(2)
    rollout = fleet.rollout(version=str(fleet.version()), waves=[50, 100])
    bad = devices(fleet, rollout["id"], expect=422, state="faild")
    assert "unknown device state 'faild'" in bad["error"]["message"]
    missing = devices(fleet, rollout["id"], expect=422, wave=3)
    assert "has waves 1..2" in missing["error"]["message"]
    devices(fleet, rollout["id"], expect=422, wave=0)
    devices(fleet, rollout["id"], expect=422, limit=1001)


def test_other_namespaces_do_not_see_the_devices(fleet: Fleet) -> None:
    fleet.devices(2)
    rollout = fleet.rollout(version=str(fleet.version()), waves=[100])
    fleet.namespace("audio")
    outsider = fleet.token("viewer", ["audio"])
    r = fleet.client.get(f"{API}/rollouts/{rollout['id']}/devices", headers=outsider)
    assert r.status_code == 404


def test_rollback_says_who_goes_back_and_who_has_no_previous_version(fleet: Fleet) -> None:
    agents = fleet.devices(4)
    v1 = fleet.version()
    base = fleet.rollout(version=str(v1), waves=[100])
    commit(fleet, agents[:2], v1, base["id"])
    fleet.tick()
    fleet.act(base["id"], "cancel")
    v2 = fleet.version()
    rollout = fleet.rollout(version=str(v2), waves=[100])
    commit(fleet, agents[:2], v2, rollout["id"], from_version=v1)
    commit(fleet, agents[2:], v2, rollout["id"])
    answer = fleet.act(rollout["id"], "rollback")
    assert answer["state"] == "rolled_back"
    assert answer["rollback"] == {
        "returning": 2,
        "without_previous": 2,
        "stays_on": v2,
        "without_previous_devices": [a.device_id for a in agents[2:]],
        "reason": "rolled back",
    }


def test_fleet_status_names_why_a_device_has_no_version(fleet: Fleet) -> None:
    agents = fleet.devices(2)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[100])
    probe_fails(fleet, agents[0], version, rollout["id"])
    commit(fleet, agents[1:], version, rollout["id"])
    [model] = fleet.client.get(f"{API}/fleet/status", headers=fleet.admin).json()["models"]
    assert model["versions"] == {"none": 1, str(version): 1}
    assert model["without_version"] == {"rolled_back": 1}


def test_rollback_with_a_baseline_sends_first_installs_to_it(fleet: Fleet) -> None:
    agents = fleet.devices(3)
    v1 = fleet.version()
    base = fleet.rollout(version=str(v1), waves=[100])
    commit(fleet, agents[:1], v1, base["id"])
    fleet.act(base["id"], "cancel")
    v2 = fleet.version()
    rollout = fleet.rollout(version=str(v2), waves=[100])
    commit(fleet, agents[:1], v2, rollout["id"], from_version=v1)
    commit(fleet, agents[1:], v2, rollout["id"])
    for bad in (v2, 99):
        r = fleet.client.post(
            f"{API}/rollouts/{rollout['id']}/rollback", json={"baseline": bad}, headers=fleet.admin
        )
        assert r.status_code == 422 and "is not another version" in r.json()["error"]["message"]
    r = fleet.client.post(
        f"{API}/rollouts/{rollout['id']}/rollback", json={"baseline": v1}, headers=fleet.admin
    )
    assert r.status_code == 200, r.text
    summary = r.json()["rollback"]
    assert (summary["returning"], summary["without_previous"]) == (3, 0)
    assert r.json()["reason"] == f"rolled back; devices without a previous version go to v{v1}"
    assert all(target(fleet, a) == (v1, True) for a in agents), "a signed downgrade to v1"
