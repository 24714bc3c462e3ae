"""What the fleet and device pages show: counts by state, online/offline, installed versions
per model as bars, one filtered page of devices, and one device's slots, history and last error.

Counts are GROUP BYs; the device list is one page (``PAGE`` rows) whatever the fleet size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from ferry.protocol.timefmt import format_time
from ferry.server.auth.service import ALL_NAMESPACES, Principal, ServerRole
from ferry.server.fleet.devices import device_slots, history
from ferry.server.fleet.tables import Device, DeviceReport, DeviceSlot
from ferry.server.rollouts.status import fleet_status

PAGE = 100
ONLINE_WINDOW_S = 300  # seen within five minutes = online (the fleet status API's default)
CHART_WIDTH = 600


@dataclass(frozen=True)
class FleetFilter:
    """The fleet page's filters; every one optional."""

    namespace: str = ""
    tag: str = ""  # key=value
    hardware: str = ""
    q: str = ""  # device id contains
    offset: int = 0

    def tag_selector(self) -> dict[str, str]:
        key, _, value = self.tag.partition("=")
        return {key.strip(): value.strip()} if key.strip() and value.strip() else {}


def scope_of(user: Principal) -> list[str] | None:
    """The namespaces the user may see; None for all."""
    if user.role is ServerRole.ADMIN or ALL_NAMESPACES in user.namespaces:
        return None
    return list(user.namespaces)


def version_bars(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Installed versions of each model slot as one bar; colours cycle over six classes."""
    bars = []
    for entry in models:
        total = sum(entry["versions"].values())
        x, parts = 0.0, []
        ordered = sorted(entry["versions"].items(), key=lambda kv: (kv[0] == "none", kv[0]))
        for k, (version, n) in enumerate(ordered):
            w = round(CHART_WIDTH * n / total, 2) if total else 0.0
            fill = "none" if version == "none" else f"v{k % 6}"
            parts.append(
                {"version": version, "count": n, "x": round(x, 2), "width": w, "fill": fill}
            )
            x += w
        bars.append({**entry, "total": total, "parts": parts})
    return bars


def slot_states(session: Session, scope: list[str] | None) -> dict[str, int]:
    """Model slots by the agent state they last reported (idle, committed, failed, ...)."""
    where = [col(Device.revoked_at).is_(None)]
    if scope is not None:
        where.append(col(Device.namespace).in_(scope))
    rows = session.exec(
        select(DeviceSlot.state, func.count())
        .join(Device, col(Device.id) == col(DeviceSlot.device_id))
        .where(*where)
        .group_by(DeviceSlot.state)
    ).all()
    return dict(sorted(rows))


def device_page(
    session: Session, scope: list[str] | None, flt: FleetFilter, now: datetime
) -> tuple[list[dict[str, Any]], bool]:
    """One page of devices matching the filters, and whether there are more."""
    stmt = select(Device).where(col(Device.revoked_at).is_(None)).order_by(col(Device.id))
    if scope is not None:
        stmt = stmt.where(col(Device.namespace).in_(scope))
    if flt.namespace:
        stmt = stmt.where(Device.namespace == flt.namespace)
    if flt.hardware:
        stmt = stmt.where(Device.hardware == flt.hardware)
    if flt.q:
        stmt = stmt.where(col(Device.id).contains(flt.q, autoescape=True))
    for key, wanted in flt.tag_selector().items():  # JSON path: json_extract / ->>
        stmt = stmt.where(col(Device.tags)[key].as_string() == wanted)
    rows = list(session.exec(stmt.offset(flt.offset).limit(PAGE + 1)).all())
    more, rows = len(rows) > PAGE, rows[:PAGE]
    slots = _slots_of(session, [d.id for d in rows])
    cutoff = format_time(now - timedelta(seconds=ONLINE_WINDOW_S))
    return [
        {
            "id": d.id,
            "namespace": d.namespace,
            "hardware": d.hardware,
            "tags": d.tags,
            "last_seen_at": d.last_seen_at,
            "online": d.last_seen_at is not None and d.last_seen_at >= cutoff,
            "slots": slots.get(d.id, []),
        }
        for d in rows
    ], more


def _slots_of(session: Session, ids: list[str]) -> dict[str, list[DeviceSlot]]:
    found: dict[str, list[DeviceSlot]] = {}
    if ids:
        for slot in session.exec(
            select(DeviceSlot)
            .where(col(DeviceSlot.device_id).in_(ids))
            .order_by(col(DeviceSlot.slot))
        ).all():
            found.setdefault(slot.device_id, []).append(slot)
    return found


def hardware_kinds(session: Session, scope: list[str] | None) -> list[str]:
    stmt = select(Device.hardware).distinct().order_by(Device.hardware)
    if scope is not None:
        stmt = stmt.where(col(Device.namespace).in_(scope))
    return list(session.exec(stmt).all())


def fleet_view(
    session: Session, user: Principal, flt: FleetFilter, now: datetime
) -> dict[str, Any]:
    scope = scope_of(user)
    if flt.namespace:
        user.require((user.role,), flt.namespace)
        scope = [flt.namespace]
    status = fleet_status(session, scope, now, ONLINE_WINDOW_S)
    devices, more = device_page(session, scope, flt, now)
    return {
        "status": status,
        "bars": version_bars(status["models"]),
        "offline": status["devices"] - status["online"],
        "slot_states": slot_states(session, scope),
        "devices": devices,
        "more": more,
        "filter": flt,
        "hardware_kinds": hardware_kinds(session, scope),
        "page": PAGE,
    }


def last_error(session: Session, device_id: str) -> DeviceReport | None:
    """The newest report that carried an error code (its detail holds the probe output)."""
    return session.exec(
        select(DeviceReport)
        .where(DeviceReport.device_id == device_id, col(DeviceReport.error_code).is_not(None))
        .order_by(col(DeviceReport.id).desc())
        .limit(1)
    ).first()


def device_view(session: Session, device: Device, now: datetime) -> dict[str, Any]:
    cutoff = format_time(now - timedelta(seconds=ONLINE_WINDOW_S))
    online = device.last_seen_at is not None and device.last_seen_at >= cutoff
    return {
        "device": device,
        "online": online,
        "slots": device_slots(session, device.id),
        "reports": history(session, device.id, 50),
        "last_error": last_error(session, device.id),
    }
