"""The rollout state machine: legal and illegal moves, operator actions with audit
entries and events, and the signed rollback to the previous version."""

from __future__ import annotations

import pytest
from sqlmodel import select

from ferry.protocol.signing import envelope_bytes
from ferry.protocol.verify import verify_desired_state
from ferry.server.audit.tables import AuditEntry
from ferry.server.core.db import session_scope
from ferry.server.rollouts.machine import (
    TRANSITIONS,
    IllegalTransitionError,
    RolloutState,
    check_transition,
)
from ferry.server.webhooks.tables import EventOutbox
from tests.fleet.harness import Fleet
from tests.rollouts.helpers import by_wave, commit, target

S = RolloutState


@pytest.mark.parametrize(
    ("current", "target_state"),
    [
        (S.COMPLETED, S.RUNNING),
        (S.CANCELLED, S.RUNNING),
        (S.ROLLED_BACK, S.RUNNING),
        (S.SCHEDULED, S.HALTED),
        (S.PAUSED, S.COMPLETED),
        (S.PAUSED, S.HALTED),
        (S.CANCELLED, S.ROLLED_BACK),
        (S.COMPLETED, S.CANCELLED),
        (S.HALTED, S.COMPLETED),
    ],
)
def test_illegal_transitions_raise(current: RolloutState, target_state: RolloutState) -> None:
    with pytest.raises(IllegalTransitionError) as info:
        check_transition(current.value, target_state)
    assert info.value.status == 409 and current.value in info.value.message


def test_terminal_states_have_no_way_out() -> None:
    assert TRANSITIONS[S.CANCELLED] == TRANSITIONS[S.ROLLED_BACK] == frozenset()
    for state, targets in TRANSITIONS.items():
        for to in targets:
            check_transition(state.value, to)


def test_operator_actions_walk_the_machine_and_are_audited(fleet: Fleet) -> None:
    fleet.devices(6)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[50, 100], bake_s=3600)
    rid = rollout["id"]
    assert fleet.act(rid, "pause")["state"] == "paused"
    assert fleet.act(rid, "pause", expect=409)["error"]["code"] == "conflict"
    assert fleet.act(rid, "resume")["state"] == "running"
    shown = fleet.act(rid, "advance")
    assert (shown["state"], shown["wave"]) == ("running", 2)
    assert fleet.act(rid, "advance")["state"] == "completed"
    assert fleet.act(rid, "advance", expect=409)["error"]["details"]["state"] == "completed"
    assert fleet.act(rid, "resume", expect=409)["error"]["code"] == "conflict"
    assert fleet.act(rid, "cancel", expect=409)["error"]["details"]["legal"] == ["rolled_back"]
    assert fleet.act(rid, "rollback")["state"] == "rolled_back"
    fleet.act(rid, "rollback", expect=409)
    with session_scope(fleet.app.state.ctx.engine) as session:
        actions = [e.action for e in session.exec(select(AuditEntry)).all() if e.target == rid]
        events = [
            e.payload["state"]
            for e in session.exec(select(EventOutbox)).all()
            if e.event_type == "rollout.state_changed"
        ]
    assert actions == [
        "rollout.create",
        "rollout.running",
        "rollout.paused",
        "rollout.running",
        "rollout.running",
        "rollout.completed",
        "rollout.rolled_back",
    ]
    assert events == [
        "scheduled",
        "running",
        "paused",
        "running",
        "running",
        "completed",
        "rolled_back",
    ]


def test_cancel_keeps_devices_that_took_the_version(fleet: Fleet) -> None:
    agents = fleet.devices(12)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[50, 100], bake_s=3600)
    waves = by_wave(rollout, agents)
    commit(fleet, waves[0][:1], version, rollout["id"])
    fleet.act(rollout["id"], "cancel")
    assert target(fleet, waves[0][0]) == (version, False)
    assert all(target(fleet, a) is None for a in waves[0][1:] + waves[1])


def test_rollback_sends_the_previous_version_as_a_signed_downgrade(fleet: Fleet) -> None:
    agents = fleet.devices(8)
    v1 = fleet.version()
    base = fleet.rollout(version=str(v1), waves=[100])
    commit(fleet, agents, v1, base["id"])
    fleet.tick()
    assert fleet.show(base["id"])["state"] == "completed"
    v2 = fleet.version()
    rollout = fleet.rollout(version=str(v2), waves=[50, 100], bake_s=3600)
    waves = by_wave(rollout, agents)
    took, untouched = waves[0], waves[1]
    commit(fleet, took, v2, rollout["id"], from_version=v1)
    before = fleet.desired(took[0])["signed"]
    fleet.act(rollout["id"], "rollback")
    envelope = fleet.desired(took[0])
    state = verify_desired_state(
        envelope_bytes(envelope),
        fleet.keyring(took[0]),
        device_id=took[0].device_id,
        last_sequence=before["sequence"],
        last_digest=None,
        now=fleet.clock.now,
    )
    slot = state.slots["main"]
    assert (slot.version, slot.allow_downgrade) == (v1, True)
    assert slot.manifest_sha256 == fleet.manifest_sha("vision", "det", v1)
    assert state.rollout_id == rollout["id"]
    assert target(fleet, untouched[0]) == (v1, False), "never took v2: stays on the base rollout"
    for agent in took:
        fleet.report(agent, "committed", from_version=v2, to_version=v1, rollout_id=rollout["id"])
    status = fleet.status(rollout["id"])
    assert status["totals"]["rolled_back"] == len(took)
    fleet_view = fleet.client.get("/api/v1/fleet/status", headers=fleet.admin).json()
    assert fleet_view["models"][0]["versions"] == {str(v1): len(agents)}


def test_rolling_out_an_older_version_is_a_signed_downgrade(fleet: Fleet) -> None:
    agents = fleet.devices(3)
    v1, v2 = fleet.version(), fleet.version()
    newer = fleet.rollout(version=str(v2), waves=[100])
    commit(fleet, agents, v2, newer["id"])
    fleet.tick()
    older = fleet.rollout(version=str(v1), waves=[100])
    assert older["state"] == "running"
    assert target(fleet, agents[0]) == (v1, True)
    fresh = fleet.enroll(fleet.enrollment_token(), "fresh")
    assert target(fleet, fresh) == (v1, False), "nothing installed: no downgrade to sign"
