"""Enrolment tokens and device enrolment.

A token lets devices join one namespace: one-time (``max_uses=1``), multi-use with
a limit, or unlimited until it expires. Using it is one conditional UPDATE, so two
devices racing for the last use cannot both win.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from ferry.protocol.endpoints import DEVICE_TOKEN_PREFIX
from ferry.protocol.timefmt import format_time
from ferry.server.audit import service as audit
from ferry.server.auth.service import Principal, ServerRole
from ferry.server.core.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UnauthenticatedError,
    ValidationFailedError,
)
from ferry.server.fleet.credentials import (
    ENROLLMENT_TOKEN_PREFIX,
    mosquitto_hash,
    new_secret,
    sha256_hex,
)
from ferry.server.fleet.selectors import DEVICE_ID, check_tags, groups_for
from ferry.server.fleet.tables import Device, EnrollmentToken
from ferry.server.registry.service import get_namespace

# How long an operator's approval to re-enrol a device without its credential stays usable.
REENROLLMENT_APPROVAL_S = 24 * 3600


def create_token(
    session: Session,
    actor: Principal,
    *,
    namespace: str,
    name: str,
    max_uses: int | None,
    expires_at: str | None,
    tags: dict[str, str],
) -> tuple[EnrollmentToken, str]:
    """Create a token row; the secret is returned once and never stored."""
    get_namespace(session, namespace)
    secret = new_secret(ENROLLMENT_TOKEN_PREFIX)
    row = EnrollmentToken(
        namespace=namespace,
        name=name,
        token_hash=sha256_hex(secret),
        max_uses=max_uses,
        expires_at=expires_at,
        tags=check_tags(tags),
        created_by=actor.name,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=actor.name,
        action="enrollment_token.create",
        target=f"enrollment_token:{row.id}",
        details={
            "namespace": namespace,
            "name": name,
            "max_uses": max_uses,
            "expires_at": expires_at,
            "tags": row.tags,
        },
    )
    return row, secret


def list_tokens(
    session: Session, viewer: Principal, namespace: str | None
) -> Sequence[EnrollmentToken]:
    stmt = select(EnrollmentToken).order_by(col(EnrollmentToken.id))
    if namespace:
        stmt = stmt.where(EnrollmentToken.namespace == namespace)
    return [row for row in session.exec(stmt).all() if viewer.in_namespace(row.namespace)]


def revoke_token(session: Session, actor: Principal, token_id: int, now: datetime) -> None:
    row = session.get(EnrollmentToken, token_id)
    if row is None or not actor.in_namespace(row.namespace):
        raise NotFoundError(f"enrolment token {token_id} does not exist")
    actor.require((ServerRole.OPERATOR,), row.namespace)
    if row.revoked_at is None:
        row.revoked_at = format_time(now)
        session.add(row)
        audit.append(
            session,
            actor=actor.name,
            action="enrollment_token.revoke",
            target=f"enrollment_token:{token_id}",
        )


@dataclass(frozen=True)
class Enrolled:
    """A device just enrolled: its row and the secrets shown to it once."""

    device: Device
    credential: str
    mqtt_password: str


def _use_token(session: Session, secret: str, now: datetime) -> EnrollmentToken:
    row = session.exec(
        select(EnrollmentToken).where(EnrollmentToken.token_hash == sha256_hex(secret))
    ).first()
    if row is None or row.revoked_at is not None:
        raise UnauthenticatedError("unknown or revoked enrolment token")
    if row.expires_at is not None and row.expires_at <= format_time(now):
        raise UnauthenticatedError(
            f"enrolment token '{row.name}' expired at {row.expires_at}; "
            "ask an operator for a new one"
        )
    used = session.exec(
        update(EnrollmentToken)
        .where(
            col(EnrollmentToken.id) == row.id,
            or_(
                col(EnrollmentToken.max_uses).is_(None),
                col(EnrollmentToken.uses) < col(EnrollmentToken.max_uses),
            ),
        )
        .values(uses=col(EnrollmentToken.uses) + 1)
    )
    if used.rowcount != 1:
        raise UnauthenticatedError(
            f"enrolment token '{row.name}' has been used up ({row.max_uses} uses)"
        )
    return row


def enroll(
    session: Session,
    *,
    token: str,
    device_id: str | None,
    hardware: str,
    agent_version: str,
    tags: dict[str, str],
    now: datetime,
    credential: str | None = None,
) -> Enrolled:
    """Create the device (or rotate an existing one's credentials) in the token's namespace.

    An enrolment token admits *new* devices; re-enrolling an existing id also needs that
    device's current ``credential`` or an operator's approval (`approve_reenrollment`),
    or any token holder could lock the real device out and take its desired state.
    The hardware type is also the ``hw`` tag, so selectors can say ``hw=jetson-orin``.
    """
    row = _use_token(session, token, now)
    if device_id is not None and not DEVICE_ID.match(device_id):
        raise ValidationFailedError(
            "device_id must match [A-Za-z0-9._:-]{1,128} (it becomes an MQTT topic segment)"
        )
    all_tags = check_tags({**row.tags, **tags, "hw": hardware})
    device_id = device_id or f"dev-{secrets.token_hex(8)}"
    device = session.get(Device, device_id)
    if device is not None:
        _check_reenrollment(device, row.namespace, credential, now)
    new_credential, mqtt_password = new_secret(DEVICE_TOKEN_PREFIX), secrets.token_urlsafe(24)
    device = device or Device(
        id=device_id,
        namespace=row.namespace,
        hardware=hardware,
        credential_hash="",
        enrolled_at=format_time(now),
    )
    device.hardware, device.agent_version, device.tags = hardware, agent_version, all_tags
    device.groups = groups_for(all_tags)
    device.credential_hash = sha256_hex(new_credential)
    device.mqtt_password_hash = mosquitto_hash(mqtt_password)
    device.enrolled_with, device.last_seen_at = row.id, format_time(now)
    device.reenrollment_approved_until = None
    session.add(device)
    session.flush()
    audit.append(
        session,
        actor=f"device:{device_id}",
        action="device.enroll",
        target=f"device:{device_id}",
        details={
            "namespace": row.namespace,
            "enrollment_token": row.id,
            "hardware": hardware,
            "tags": all_tags,
        },
    )
    return Enrolled(device, new_credential, mqtt_password)


def _check_reenrollment(
    device: Device, namespace: str, credential: str | None, now: datetime
) -> None:
    """Refuse to re-enrol ``device`` unless it proves itself or an operator approved it."""
    if device.namespace != namespace:
        raise ForbiddenError(
            f"device '{device.id}' belongs to another namespace; this token "
            f"enrols into '{namespace}'"
        )
    if device.revoked_at is not None:
        raise ForbiddenError(f"device '{device.id}' was revoked; enrol it under a new id")
    if credential is not None:
        if not hmac.compare_digest(sha256_hex(credential), device.credential_hash):
            raise ForbiddenError(
                f"the credential presented for device '{device.id}' is not its current one",
                {"device_id": device.id},
            )
        return
    approved = device.reenrollment_approved_until
    if approved is not None and format_time(now) < approved:
        return
    raise ConflictError(
        f"device '{device.id}' is already enrolled; re-enrolling it needs its current "
        f"credential (field 'credential') or an operator's approval "
        f"(POST /api/v1/devices/{device.id}/approve-reenrollment)",
        {"device_id": device.id},
    )


def approve_reenrollment(session: Session, actor: Principal, device: Device, now: datetime) -> str:
    """Let one enrolment of ``device``'s id through without its credential (a device that
    lost its storage); returns until when. Used up by that enrolment."""
    actor.require((ServerRole.OPERATOR,), device.namespace)
    if device.revoked_at is not None:
        raise ConflictError(
            f"device '{device.id}' was revoked; enrol it under a new id", {"device_id": device.id}
        )
    until = format_time(now + timedelta(seconds=REENROLLMENT_APPROVAL_S))
    device.reenrollment_approved_until = until
    session.add(device)
    audit.append(
        session,
        actor=actor.name,
        action="device.approve_reenrollment",
        target=f"device:{device.id}",
        details={"until": until},
    )
    return until
