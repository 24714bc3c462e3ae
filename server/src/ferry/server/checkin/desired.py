"""The signed per-device desired state, computed on request.

For each slot the target is the newest rollout that claims the device: a running
or paused rollout whose current wave includes it, a completed one that selects it,
a halted or cancelled one it already took, or — after a rollback — the version it
ran before, signed with ``allow_downgrade``. Rules for the sequence number:

* same content → the stored document and sequence, unchanged;
* new content, the stored document within a quarter of its lifetime of expiring,
  or signed by a director key since rotated → sequence + 1, fresh
  ``issued_at``/``expires_at``, new signature.

Most check-ins find the stored document still right. On SQLite `stored_envelope`
checks that in a read-only transaction (no write lock, so check-ins do not queue
behind each other); only when it says no does `desired_state_envelope` lock the
device row (FOR UPDATE; on SQLite the immediate transaction), recompute and sign,
so two replicas cannot hand out two documents with one sequence. On PostgreSQL
the route calls `desired_state_envelope` directly: the row lock blocks only that
device's own requests, and a reused document is served without a write.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import and_
from sqlmodel import Session, col, select

from ferry.protocol.canonical import canonical_json
from ferry.protocol.documents import DesiredState, SlotTarget
from ferry.protocol.keys import SigningKey
from ferry.protocol.signing import envelope_bytes, sign_document
from ferry.protocol.timefmt import format_time
from ferry.protocol.waves import wave_index
from ferry.server.core.errors import UnauthenticatedError
from ferry.server.fleet.selectors import matches
from ferry.server.fleet.tables import Device, DeviceSlot
from ferry.server.registry.tables import ModelVersion
from ferry.server.rollouts.machine import DeviceState, RolloutState, opened_waves, public_id
from ferry.server.rollouts.tables import Rollout, RolloutDevice

S = RolloutState
_TARGETING = [S.RUNNING, S.PAUSED, S.HALTED, S.COMPLETED, S.CANCELLED, S.ROLLED_BACK]
_JOINING = (S.RUNNING, S.PAUSED, S.COMPLETED)  # a late-enrolled matching device joins these
_TOOK = (DeviceState.DOWNLOADING, DeviceState.INSTALLING, DeviceState.COMMITTED)


class Served(NamedTuple):
    """The canonical envelope bytes to serve, the document's expiry, and the device's
    (rollout pk, wave) memberships, by which a wave change voids its cached copy."""

    body: bytes
    expires_at: str
    memberships: frozenset[tuple[int, int]]


@dataclass(frozen=True)
class Claims:
    """Per slot, the claim of the newest rollout that claims the device; and every rollout
    (pk, wave) the device is a member of, claiming or not."""

    slots: dict[str, Claim]
    memberships: frozenset[tuple[int, int]]


@dataclass(frozen=True)
class Claim:
    """One slot's target and the rollout (and retry attempt) that set it."""

    rollout_id: str
    target: SlotTarget
    attempt: int


def lock_device(session: Session, device_id: str) -> Device:
    device = session.exec(select(Device).where(Device.id == device_id).with_for_update()).first()
    if device is None or device.revoked_at is not None:
        raise UnauthenticatedError("unknown or revoked device")
    return device


def _claim(rollout: Rollout, member: RolloutDevice) -> Claim | None:
    rid, state = public_id(rollout.id or 0), RolloutState(rollout.state)
    # Rolling out a version older than the one a device runs is a deliberate, signed downgrade.
    older = member.from_version is not None and rollout.version < member.from_version
    new = SlotTarget(
        rollout.model,
        rollout.version,
        rollout.manifest_sha256,
        allow_downgrade=older,
        rollout_id=rid,
    )
    opened = opened_waves(state, rollout.wave, len(rollout.waves))
    if opened is not None:
        return Claim(rid, new, member.attempts) if member.wave in opened else None
    if state in (S.HALTED, S.CANCELLED):
        return Claim(rid, new, member.attempts) if member.state in _TOOK else None
    took = member.state in (*_TOOK, DeviceState.ROLLED_BACK)
    if took and member.from_version and member.from_manifest:
        back = SlotTarget(
            rollout.model,
            member.from_version,
            member.from_manifest,
            allow_downgrade=True,
            rollout_id=rid,
        )
        return Claim(rid, back, member.attempts)
    return None


def _join(session: Session, rollout: Rollout, device: Device, stamp: str) -> RolloutDevice:
    """A device enrolled (or retagged) after the rollout was created joins it now."""
    slot = session.get(DeviceSlot, (device.id, rollout.slot))
    from_version = (
        slot.installed_version if slot is not None and slot.model == rollout.model else None
    )
    manifest = (
        session.exec(
            select(ModelVersion.manifest_sha256).where(
                ModelVersion.model_id == rollout.model_id, ModelVersion.version == from_version
            )
        ).first()
        if from_version
        else None
    )
    member = RolloutDevice(
        rollout_id=rollout.id or 0,
        device_id=device.id,
        wave=wave_index(rollout.wave_seed(), device.id, rollout.waves),
        from_version=from_version,
        from_manifest=manifest,
        updated_at=stamp,
    )
    session.add(member)
    session.flush()
    return member


def _may_join(rollout: Rollout, device: Device) -> bool:
    return (
        rollout.state in _JOINING
        and matches(rollout.selector, device.tags)
        and (not rollout.hardware or device.hardware in rollout.hardware)
    )


def compute_claims(
    session: Session, device: Device, now: datetime, *, join: bool = True
) -> Claims | None:
    """Per slot, the claim of the newest rollout that claims this device.

    A device that should join a rollout (enrolled or retagged after it began)
    gets a membership row; with ``join=False`` (read-only callers) that case
    returns None instead.
    """
    rows = session.exec(
        select(Rollout, RolloutDevice)
        .outerjoin(
            RolloutDevice,
            and_(
                col(RolloutDevice.rollout_id) == col(Rollout.id),
                col(RolloutDevice.device_id) == device.id,
            ),
        )
        .where(Rollout.namespace == device.namespace, col(Rollout.state).in_(_TARGETING))
        .order_by(col(Rollout.id).desc())
    ).all()
    claims: dict[str, Claim] = {}
    memberships = {(rollout.id or 0, member.wave) for rollout, member in rows if member}
    for rollout, member in rows:
        if rollout.slot in claims:
            continue
        if member is None:
            if not _may_join(rollout, device):
                continue
            if not join:
                return None
            member = _join(session, rollout, device, format_time(now))
            memberships.add((rollout.id or 0, member.wave))
        claim = _claim(rollout, member)
        if claim is not None:
            claims[rollout.slot] = claim
    return Claims(claims, frozenset(memberships))


def _content_digest(claims: dict[str, Claim]) -> str:
    """Identity of what is targeted; a retry attempt counts, so a retry gets a new sequence."""
    content = {
        slot: {**c.target.to_dict(), "rollout_id": c.rollout_id, "attempt": c.attempt}
        for slot, c in claims.items()
    }
    return hashlib.sha256(canonical_json(content)).hexdigest()


def _signer(envelope: str) -> str:
    """Key id of the stored document's signature: a rotated director key means re-sign."""
    signatures = json.loads(envelope)["signatures"]
    return str(signatures[0]["keyid"]) if signatures else ""


def _reusable(device: Device, digest: str, now: datetime, ttl_s: int, keyid: str) -> bool:
    """The stored document has this content, is far from expiry and has a current signer."""
    margin = timedelta(seconds=ttl_s // 4)
    return (
        bool(device.ds_envelope)
        and digest == device.ds_content_digest
        and device.ds_expires_at > format_time(now + margin)
        and _signer(device.ds_envelope) == keyid
    )


def stored_envelope(
    session: Session,
    device_id: str,
    now: datetime,
    ttl_s: int,
    director_key: Callable[[], SigningKey],
) -> Served | None:
    """The stored envelope when it is still the one to serve, found without writing."""
    device = session.get(Device, device_id)
    if device is None or device.revoked_at is not None:
        raise UnauthenticatedError("unknown or revoked device")
    claims = compute_claims(session, device, now, join=False)
    if claims is None or not _reusable(
        device, _content_digest(claims.slots), now, ttl_s, director_key().public.keyid
    ):
        return None
    return Served(device.ds_envelope.encode("utf-8"), device.ds_expires_at, claims.memberships)


def desired_state_envelope(
    session: Session,
    device_id: str,
    now: datetime,
    ttl_s: int,
    director_key: Callable[[], SigningKey],
) -> Served:
    """The canonical signed envelope to serve; persists a new one when needed (the stored
    one is served without a write; the caller batches ``last_seen_at``)."""
    device = lock_device(session, device_id)
    found = compute_claims(session, device, now)
    assert found is not None  # joining is allowed here
    claims, memberships = found.slots, found.memberships
    digest = _content_digest(claims)
    key = director_key()
    if _reusable(device, digest, now, ttl_s, key.public.keyid):
        return Served(device.ds_envelope.encode("utf-8"), device.ds_expires_at, memberships)
    newest = next(iter(claims.values()), None)
    document = DesiredState(
        device_id=device.id,
        sequence=device.ds_sequence + 1,
        issued_at=format_time(now),
        expires_at=format_time(now + timedelta(seconds=ttl_s)),
        rollout_id=newest.rollout_id if newest else None,
        slots={slot: claim.target for slot, claim in sorted(claims.items())},
    )
    envelope = envelope_bytes(sign_document(document.to_dict(), [key]))
    device.ds_sequence, device.ds_content_digest = document.sequence, digest
    device.ds_envelope, device.ds_expires_at = envelope.decode("utf-8"), document.expires_at
    device.last_seen_at = format_time(now)
    session.add(device)
    session.flush()
    return Served(envelope, document.expires_at, memberships)
