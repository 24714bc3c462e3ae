"""The signed desired state: sequence rules, signature, expiry and re-signing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ferry.protocol.documents import Keyring, Role
from ferry.protocol.errors import ExpiredDesiredStateError, SequenceRollbackError, UntrustedKeyError
from ferry.protocol.signing import envelope_bytes, parse_envelope
from ferry.protocol.timefmt import parse_time
from ferry.protocol.verify import verify_desired_state
from ferry.server.core.db import session_scope
from ferry.server.trust.service import get_envelope, rotate
from tests.fleet.harness import API, Fleet


def test_same_content_is_the_same_document_and_sequence(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    first = fleet.desired(agent)
    fleet.clock.advance(3600)
    again = fleet.desired(agent)
    assert again == first
    assert first["signed"]["sequence"] == 1 and first["signed"]["slots"] == {}


def test_new_content_takes_the_next_sequence_and_verifies(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    keyring = fleet.keyring(agent)
    first = fleet.desired(agent)
    state = verify_desired_state(
        envelope_bytes(first),
        keyring,
        device_id=agent.device_id,
        last_sequence=0,
        last_digest=None,
        now=fleet.clock.now,
    )
    assert state.sequence == 1
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[100])
    second = fleet.desired(agent)
    state = verify_desired_state(
        envelope_bytes(second),
        keyring,
        device_id=agent.device_id,
        last_sequence=1,
        last_digest=None,
        now=fleet.clock.now,
    )
    assert state.sequence == 2 and state.rollout_id == rollout["id"]
    target = state.slots["main"]
    assert (target.model, target.version, target.allow_downgrade) == ("vision/det", version, False)
    assert target.manifest_sha256 == fleet.manifest_sha("vision", "det", version)
    with pytest.raises(SequenceRollbackError):
        verify_desired_state(
            envelope_bytes(first),
            keyring,
            device_id=agent.device_id,
            last_sequence=2,
            last_digest=None,
            now=fleet.clock.now,
        )


def test_document_close_to_expiry_is_resigned_with_a_new_sequence(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    fleet.runtime.settings = replace(fleet.runtime.settings, desired_state_ttl_s=4000)
    first = fleet.desired(agent)["signed"]
    fleet.clock.advance(2999)  # 1001 s left: more than a quarter, still served as is
    assert fleet.desired(agent)["signed"] == first
    fleet.clock.advance(2)
    fresh = fleet.desired(agent)["signed"]
    assert fresh["sequence"] == first["sequence"] + 1 and fresh["slots"] == first["slots"]
    assert parse_time(fresh["expires_at"]) == fleet.clock.now.replace(microsecond=0) + (
        parse_time(first["expires_at"]) - parse_time(first["issued_at"])
    )


def test_expired_document_fails_verification_on_the_device(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    doc = fleet.desired(agent)
    later = parse_time(doc["signed"]["expires_at"])
    with pytest.raises(ExpiredDesiredStateError):
        verify_desired_state(
            envelope_bytes(doc),
            fleet.keyring(agent),
            device_id=agent.device_id,
            last_sequence=0,
            last_digest=None,
            now=later,
        )


def test_desired_state_needs_a_device_credential(fleet: Fleet) -> None:
    path = f"{API}/device/desired-state"
    assert fleet.client.get(path).status_code == 401
    assert (
        fleet.client.get(path, headers={"Authorization": "Bearer frd_unknown"}).status_code == 401
    )
    r = fleet.client.get(path, headers=fleet.admin)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert fleet.client.get(path, headers=fleet.token("operator")).status_code == 403


def test_rotating_the_director_key_resigns_with_a_new_sequence(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    first = fleet.desired(agent)
    ctx = fleet.app.state.ctx
    with session_scope(ctx.engine) as session:
        rotate(session, ctx.settings.key_dir, Role.DIRECTOR, 365)
    with session_scope(ctx.engine) as session:
        keyring = Keyring.from_dict(parse_envelope(get_envelope(session).encode()).signed)
    second = fleet.desired(agent)
    state = verify_desired_state(
        envelope_bytes(second),
        keyring,
        device_id=agent.device_id,
        last_sequence=first["signed"]["sequence"],
        last_digest=None,
        now=fleet.clock.now,
    )
    assert state.sequence == first["signed"]["sequence"] + 1
    with pytest.raises(UntrustedKeyError):
        verify_desired_state(
            envelope_bytes(first),
            keyring,
            device_id=agent.device_id,
            last_sequence=0,
            last_digest=None,
            now=fleet.clock.now,
        )
