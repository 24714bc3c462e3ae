"""Wave membership is ferry.protocol.waves.wave_index, and announcing costs one publish."""

from __future__ import annotations

from sqlmodel import select

from ferry.server.audit.tables import AuditEntry
from ferry.server.core.db import session_scope
from ferry.server.webhooks.tables import EventOutbox
from tests.fleet.harness import API, Fleet
from tests.rollouts.helpers import by_wave, commit, fail, target


def test_membership_is_the_shared_deterministic_hash(fleet: Fleet) -> None:
    agents = fleet.devices(40)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[10, 50, 100])
    waves = by_wave(rollout, agents)
    status = fleet.status(rollout["id"])
    assert [w["total"] for w in status["waves"]] == [len(waves.get(k, [])) for k in range(3)]
    first = {a.device_id for a in waves.get(0, [])}
    for agent in agents:
        expected = (version, False) if agent.device_id in first else None
        assert target(fleet, agent) == expected


def test_a_wave_is_announced_with_one_publish_whatever_its_size(fleet: Fleet) -> None:
    agents = fleet.devices(30, tags={"region": "eu"})
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[50, 100], selector="region=eu")
    assert fleet.notifier.calls == [(["region:eu"], rollout["id"])]
    waves = by_wave(rollout, agents)
    commit(fleet, waves[0], version, rollout["id"])
    fleet.tick()
    assert fleet.show(rollout["id"])["wave"] == 2
    assert len(fleet.notifier.calls) == 2
    fleet.tick()  # nothing changed: nothing announced again
    assert len(fleet.notifier.calls) == 2
    assert all(target(fleet, a) == (version, False) for a in agents)


def test_devices_enrolled_later_join_the_rollout(fleet: Fleet) -> None:
    fleet.devices(2)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[100])
    late = fleet.enroll(fleet.enrollment_token(), "late-1")
    assert target(fleet, late) == (version, False)
    assert fleet.status(rollout["id"])["devices"] == 3
    incompatible = fleet.enroll(fleet.enrollment_token(), "late-2", hardware="rpi4")
    assert target(fleet, incompatible) is None
    assert (
        fleet.client.get(f"{API}/rollouts/{rollout['id']}/status", headers=fleet.admin).json()[
            "devices"
        ]
        == 3
    )


def test_one_wave_number_everywhere_halt_reason_json_table_events_audit(fleet: Fleet) -> None:
    """The first wave is wave 1 in the halt reason, the rollout JSON, the status table,
    the device listing, the webhook event and the audit log (docs/rollouts.md)."""
    agents = fleet.devices(12)
    version = fleet.version()
    rollout = fleet.rollout(
        version=str(version), waves=[50, 100], max_failures=0, max_failure_pct=None
    )
    first = by_wave(rollout, agents)[0]
    fail(fleet, first[:1], version, rollout["id"])
    fleet.tick()
    shown = fleet.show(rollout["id"])
    assert shown["state"] == "halted" and shown["wave"] == 1
    assert shown["reason"].startswith("failure limit crossed in wave 1:")
    status = fleet.status(rollout["id"])
    assert [w["wave"] for w in status["waves"]] == [1, 2]
    assert status["waves"][0]["total"] == len(first)
    listed = fleet.client.get(
        f"{API}/rollouts/{rollout['id']}/devices", params={"state": "failed"}, headers=fleet.admin
    ).json()
    assert [d["wave"] for d in listed["devices"]] == [1]
    with session_scope(fleet.app.state.ctx.engine) as session:
        events = [
            e.payload["wave"]
            for e in session.exec(select(EventOutbox)).all()
            if e.payload.get("rollout_id") == rollout["id"]
        ]
        audited = [
            (e.action, e.details.get("wave"))
            for e in session.exec(
                select(AuditEntry).where(AuditEntry.target == rollout["id"])
            ).all()
        ]
    assert events == [0, 1, 1], "created (no wave open yet), running wave 1, halted in wave 1"
    assert audited == [("rollout.create", None), ("rollout.running", 1), ("rollout.halted", 1)]
