"""Device records: list, show, tag, untag, revoke, and status history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, col, select

from ferry.protocol.timefmt import format_time
from ferry.server.audit import service as audit
from ferry.server.auth.service import Principal
from ferry.server.core import domain_events
from ferry.server.core.errors import NotFoundError, ValidationFailedError
from ferry.server.fleet.events import DeviceRevoked
from ferry.server.fleet.selectors import Selector, check_tags, groups_for, hardware_filter, matches
from ferry.server.fleet.tables import Device, DeviceReport, DeviceSlot


def get_device(session: Session, viewer: Principal, device_id: str) -> Device:
    """The device, or 404 — also when it lies outside the viewer's namespaces."""
    device = session.get(Device, device_id)
    if device is None or not viewer.in_namespace(device.namespace):
        raise NotFoundError(f"device '{device_id}' does not exist")
    return device


def list_devices(
    session: Session,
    viewer: Principal,
    *,
    namespace: str | None,
    selector: Selector,
    include_revoked: bool,
    limit: int,
    offset: int,
) -> list[Device]:
    stmt = select(Device).order_by(col(Device.id))
    if namespace:
        stmt = stmt.where(Device.namespace == namespace)
    if not include_revoked:
        stmt = stmt.where(col(Device.revoked_at).is_(None))
    stmt = stmt.where(*hardware_filter(selector))
    rows = [
        d
        for d in session.exec(stmt).all()
        if viewer.in_namespace(d.namespace) and matches(selector, d.tags)
    ]
    return rows[offset : offset + limit]


def device_slots(session: Session, device_id: str) -> Sequence[DeviceSlot]:
    return session.exec(
        select(DeviceSlot).where(DeviceSlot.device_id == device_id).order_by(col(DeviceSlot.slot))
    ).all()


def history(session: Session, device_id: str, limit: int) -> Sequence[DeviceReport]:
    """Newest first: the device's status reports as received."""
    return session.exec(
        select(DeviceReport)
        .where(DeviceReport.device_id == device_id)
        .order_by(col(DeviceReport.id).desc())
        .limit(limit)
    ).all()


def change_tags(
    session: Session, actor: Principal, device: Device, *, add: dict[str, str], remove: list[str]
) -> Device:
    """Selectors see new tags at once; MQTT groups follow at the device's next enrolment."""
    if "hw" in add or "hw" in remove:
        raise ValidationFailedError("the 'hw' tag is the device's hardware type; it cannot change")
    tags = {k: v for k, v in device.tags.items() if k not in set(remove)}
    tags.update(check_tags(add))
    device.tags, device.groups = tags, groups_for(tags)
    session.add(device)
    session.flush()
    audit.append(
        session,
        actor=actor.name,
        action="device.tags",
        target=f"device:{device.id}",
        details={"add": add, "remove": sorted(remove)},
    )
    return device


def revoke(session: Session, actor: Principal, device: Device, now: datetime) -> bool:
    """Revoke the credential (401 from now on); True when this call revoked it."""
    if device.revoked_at is not None:
        return False
    device.revoked_at = format_time(now)
    session.add(device)
    session.flush()
    domain_events.publish(session, DeviceRevoked(device.id))
    audit.append(session, actor=actor.name, action="device.revoke", target=f"device:{device.id}")
    return True
