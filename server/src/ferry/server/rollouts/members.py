"""The devices of one rollout, page by page: who is where, since when, and why it failed.

Answers "which devices failed, and why?" for fleets of thousands: a keyset page
over ``rollout_device`` (its primary key is (rollout_id, device_id), so every page
is an index range, whatever the offset), then one query for the stored report
details of the failed devices of that page only. Wave numbers are public (1-based,
see docs/rollouts.md); the column stays 0-based inside the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, or_
from sqlmodel import Session, col, select

from ferry.protocol.timefmt import format_time, parse_time
from ferry.server.core.errors import ValidationFailedError
from ferry.server.fleet.tables import Device, DeviceReport
from ferry.server.rollouts.machine import (
    FAILURES,
    TOOK_VERSION,
    DeviceState,
    public_id,
    public_wave,
)
from ferry.server.rollouts.tables import Rollout, RolloutDevice

# `state=failed` asks for every device whose update failed, whatever the way it failed:
# the agent gave up (failed), the probe failed and the agent went back (rolled_back),
# or the device went silent mid-update (timed_out) — the states the gates count as failures.
STATE_GROUPS: dict[str, tuple[str, ...]] = {
    DeviceState.FAILED.value: tuple(s.value for s in FAILURES),
    "in_progress": (DeviceState.DOWNLOADING.value, DeviceState.INSTALLING.value),
}
MAX_PAGE = 1000


@dataclass(frozen=True)
class MemberQuery:
    """The filters and the page of ``GET /rollouts/{id}/devices``."""

    states: tuple[str, ...] = ()  # empty = every state
    wave: int | None = None  # public, 1-based
    limit: int = 100
    cursor: str | None = None  # the last device id of the previous page


def parse_states(text: str | None) -> tuple[str, ...]:
    """``failed`` or ``pending,timed_out`` → the device states asked for (422 on a typo)."""
    if not text:
        return ()
    known = [s.value for s in DeviceState]
    states: list[str] = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        if word in STATE_GROUPS:
            states.extend(STATE_GROUPS[word])
        elif word in known:
            states.append(word)
        else:
            raise ValidationFailedError(
                f"unknown device state {word!r}; one of {', '.join(known)}, or in_progress "
                f"(failed includes rolled_back and timed_out)",
                {"state": word},
            )
    return tuple(dict.fromkeys(states))


def check_wave(rollout: Rollout, wave: int | None) -> None:
    """A wave number the rollout has (1..number of waves)."""
    if wave is not None and not 1 <= wave <= len(rollout.waves):
        raise ValidationFailedError(
            f"{public_id(rollout.id or 0)} has waves 1..{len(rollout.waves)}; there is no "
            f"wave {wave}",
            {"wave": wave, "waves": len(rollout.waves)},
        )


def list_members(
    session: Session, rollout: Rollout, query: MemberQuery, now: datetime
) -> dict[str, Any]:
    """One page of the rollout's devices, ordered by device id, and the cursor to the next."""
    check_wave(rollout, query.wave)
    where: list[ColumnElement[bool]] = [col(RolloutDevice.rollout_id) == rollout.id]
    if query.states:
        where.append(col(RolloutDevice.state).in_(query.states))
    if query.wave is not None:
        where.append(col(RolloutDevice.wave) == query.wave - 1)  # public → index
    total = session.exec(select(func.count()).select_from(RolloutDevice).where(*where)).one()
    page_where = [*where, col(RolloutDevice.device_id) > query.cursor] if query.cursor else where
    rows = session.exec(
        select(RolloutDevice, Device.hardware)
        .join(Device, col(Device.id) == col(RolloutDevice.device_id))
        .where(*page_where)
        .order_by(col(RolloutDevice.device_id))
        .limit(query.limit + 1)
    ).all()
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    details = failure_details(session, rollout, [m for m, _ in rows])
    devices = [
        member_public(rollout, member, hardware, details.get(member.device_id), now)
        for member, hardware in rows
    ]
    return {
        "rollout_id": public_id(rollout.id or 0),
        "at": format_time(now),
        "total": total,
        "devices": devices,
        "next_cursor": devices[-1]["device_id"] if more and devices else None,
    }


def failure_details(
    session: Session, rollout: Rollout, members: Sequence[RolloutDevice]
) -> dict[str, str]:
    """The stored ``detail`` of the newest report that gave each failed member its error code.

    For a probe failure the agent puts the probe's output there; reports without a
    rollout id (sent before the device knew it) count when they name the version.
    """
    failed = {
        m.device_id: m.error_code
        for m in members
        if m.error_code and m.state in STATE_GROUPS[DeviceState.FAILED.value]
    }
    if not failed:
        return {}
    rid = public_id(rollout.id or 0)
    reports = session.exec(
        select(DeviceReport.device_id, DeviceReport.error_code, DeviceReport.detail)
        .where(
            col(DeviceReport.device_id).in_(list(failed)),
            col(DeviceReport.error_code).is_not(None),
            DeviceReport.slot == rollout.slot,
            or_(
                col(DeviceReport.rollout_id) == rid,
                (col(DeviceReport.rollout_id).is_(None))
                & (col(DeviceReport.to_version) == rollout.version),
            ),
        )
        .order_by(col(DeviceReport.at), col(DeviceReport.id))
    ).all()
    details: dict[str, str] = {}
    for device_id, code, detail in reports:  # oldest first: the newest match wins
        if failed.get(device_id) == code:
            details[device_id] = detail
    return details


def member_public(
    rollout: Rollout, member: RolloutDevice, hardware: str, detail: str | None, now: datetime
) -> dict[str, Any]:
    """One device of the rollout as the API shows it."""
    since = parse_time(member.updated_at)
    return {
        "device_id": member.device_id,
        "hardware": hardware,
        "wave": public_wave(member.wave),
        "state": member.state,
        "since": member.updated_at,
        "time_in_state_s": max(0, int((now - since).total_seconds())),
        "last_report_at": member.last_report_at or None,
        "attempts": member.attempts,
        "from_version": member.from_version,
        "error_code": member.error_code,
        "error_message": error_message(rollout, member, detail),
    }


def error_message(rollout: Rollout, member: RolloutDevice, detail: str | None) -> str | None:
    """What went wrong, in words: the device's own account, or the server's for a timeout."""
    if member.state == DeviceState.TIMED_OUT and member.error_code == "never_started":
        return (
            f"never started the update within {rollout.in_progress_timeout_s} s of its "
            f"wave opening (in_progress_timeout_s); the device may be offline"
        )
    if member.state == DeviceState.TIMED_OUT and not detail:
        return (
            f"no report for {rollout.in_progress_timeout_s} s while the update was in "
            f"progress (in_progress_timeout_s); the device may be offline or stuck"
        )
    if member.state in STATE_GROUPS[DeviceState.FAILED.value]:
        return detail or None
    return None


def rollback_summary(session: Session, rollout: Rollout, most: int = 50) -> dict[str, Any]:
    """Who a rollback sends back, and who stays: a device that took the version with no
    version before it (its first install) has nothing to go back to and keeps it."""
    took = [s.value for s in TOOK_VERSION]
    rows = session.exec(
        select(RolloutDevice.device_id, RolloutDevice.from_version)
        .where(RolloutDevice.rollout_id == rollout.id, col(RolloutDevice.state).in_(took))
        .order_by(col(RolloutDevice.device_id))
    ).all()
    staying = [device_id for device_id, previous in rows if previous is None]
    return {
        "returning": len(rows) - len(staying),
        "without_previous": len(staying),
        "without_previous_devices": staying[:most],
        "stays_on": rollout.version,
        "reason": rollout.reason,
    }
