"""Status report ingest, shared by ``POST /device/status`` and the MQTT subscriber.

Three rules make the server's view of a device converge on the device's own,
whatever the interleaving of transports (MQTT batches, HTTP posts) and replicas:

* **Idempotent by ``report_id``**: a report already stored (resent after an
  offline spell, or received over both MQTT and HTTP) is a duplicate and is not
  applied again. New reports go in with one ``INSERT … ON CONFLICT DO NOTHING
  RETURNING``, so a copy that another replica stores first is a duplicate here.
* **Read, then write, under a row lock**: the slot and membership rows a batch
  changes are selected ``FOR UPDATE`` (PostgreSQL; SQLite has one writer at a
  time), so an HTTP ``committed`` committed by another transaction meanwhile is
  seen, never overwritten by a stale in-memory copy (the lost update).
* **Newest report wins, by the device's own order**: a report carries
  ``report_seq``, a counter the device persists and increases for every report
  it makes; a row remembers the highest it applied and ignores anything lower.
  Reports without one (older agents) fall back to their second-precision time,
  where within one second the state further through an update wins.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from ferry.protocol.documents import AgentState, StatusReport
from ferry.protocol.timefmt import format_time, parse_time, utcnow
from ferry.server.core.errors import ForbiddenError, UnauthenticatedError
from ferry.server.fleet.tables import Device, DeviceReport, DeviceSlot
from ferry.server.rollouts.machine import AGENT_TO_DEVICE, DeviceState, RolloutState, parse_id
from ferry.server.rollouts.tables import Rollout, RolloutDevice

MAX_REPORTS = 500
Touch = Callable[[str, datetime], None]  # notes a device seen (`LastSeen.touch`)


@dataclass
class IngestResult:
    """Which reports were applied now, which had been seen before, which were refused."""

    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unknown_device: list[str] = field(default_factory=list)
    revoked_device: list[str] = field(default_factory=list)
    lags_s: list[float] = field(default_factory=list)  # ingest time minus the report's own


def ingest_reports(
    session: Session,
    device_id: str,
    reports: Sequence[StatusReport],
    now: datetime | None = None,
    touch: Touch | None = None,
) -> IngestResult:
    """``POST /device/status``: one device's reports, in the caller's transaction.

    The device must exist and not be revoked (401 before anything else): the batch's
    own liveness read says so, not a separate load of the device row, unless there is
    no report to read it with.
    """
    strangers = sorted({r.device_id for r in reports if r.device_id != device_id})
    if strangers or not reports:
        _require_live(session, device_id)
    if strangers:
        raise ForbiddenError(
            f"device '{device_id}' may only report for itself", {"device_ids": strangers}
        )
    result = ingest_batch(session, reports, now, touch)
    if result.unknown_device or result.revoked_device:
        raise UnauthenticatedError("unknown or revoked device")
    return result


def _require_live(session: Session, device_id: str) -> None:
    if not _live_devices(session, {device_id}, IngestResult(), []):
        raise UnauthenticatedError("unknown or revoked device")


def ingest_batch(
    session: Session,
    reports: Sequence[StatusReport],
    now: datetime | None = None,
    touch: Touch | None = None,
) -> IngestResult:
    """Store and apply reports of any number of devices (an MQTT batch) in one transaction.

    The caller has checked that each report came from its own device (the topic or
    the credential); unknown and revoked devices are counted, not applied. Each live
    device's ``last_seen_at`` is noted with ``touch`` (the batched writer,
    `ferry.server.fleet.last_seen`), or without one written here in one statement.
    """
    now = now or utcnow()
    result = IngestResult()
    live = _live_devices(session, {r.device_id for r in reports}, result, reports)
    wanted = _first_copies([r for r in reports if r.device_id in live])
    stored = _store(session, wanted, now)
    fresh = [r for r in wanted if r.report_id in stored]
    if fresh:
        _apply_all(session, fresh, now)
    counted: set[str] = set()
    for report in (r for r in reports if r.device_id in live):
        first = report.report_id in stored and report.report_id not in counted
        (result.accepted if first else result.duplicates).append(report.report_id)
        if first:
            result.lags_s.append(_lag(report, now))
        counted.add(report.report_id)
    if touch is not None:
        for device_id in live:
            touch(device_id, now)
    elif live:
        session.exec(
            update(Device)
            .where(col(Device.id).in_(sorted(live)))
            .values(last_seen_at=format_time(now))
        )
    session.flush()
    return result


def _live_devices(
    session: Session, ids: set[str], result: IngestResult, reports: Sequence[StatusReport]
) -> set[str]:
    """The ids of the reports' devices that exist and are not revoked (two columns read)."""
    rows = session.exec(select(Device.id, Device.revoked_at).where(col(Device.id).in_(ids))).all()
    known = dict(rows)
    for report in reports:
        if report.device_id not in known:
            result.unknown_device.append(report.report_id)
        elif known[report.device_id] is not None:
            result.revoked_device.append(report.report_id)
    return {device_id for device_id, revoked_at in rows if revoked_at is None}


def _lag(report: StatusReport, now: datetime) -> float:
    """Seconds from the report's timestamp to now (a device clock ahead of ours gives 0)."""
    try:
        return max(0.0, (now - parse_time(report.at)).total_seconds())
    except ValueError:
        return 0.0


def _first_copies(reports: Sequence[StatusReport]) -> list[StatusReport]:
    """One report per ``report_id`` (a batch may hold a redelivered copy)."""
    seen: dict[str, StatusReport] = {}
    for report in reports:
        seen.setdefault(report.report_id, report)
    return list(seen.values())


def _store(session: Session, reports: Sequence[StatusReport], now: datetime) -> set[str]:
    """Insert the reports not stored yet; returns the ids this transaction inserted."""
    if not reports:
        return set()
    received = format_time(now)
    rows = [
        {
            "report_id": r.report_id,
            "device_id": r.device_id,
            "slot": r.slot,
            "state": r.state.value,
            "at": r.at,
            "from_version": r.from_version,
            "to_version": r.to_version,
            "error_code": r.error_code,
            "detail": r.detail,
            "rollout_id": r.rollout_id,
            "sequence": r.sequence,
            "report_seq": r.report_seq,
            "timings": dict(r.timings),
            "received_at": received,
        }
        for r in reports
    ]
    # executemany with RETURNING: one cached statement, batched into multi-row VALUES.
    returned = session.connection().execute(_insert_ignoring_duplicates(session), rows)
    return set(returned.scalars())


def _insert(session: Session) -> Any:
    """The dialect's INSERT, which knows ``ON CONFLICT DO NOTHING``."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _insert_ignoring_duplicates(session: Session) -> Insert:
    statement: Insert = (
        _insert(session)(DeviceReport)
        .on_conflict_do_nothing(index_elements=["report_id"])
        .returning(col(DeviceReport.report_id))
    )
    return statement


def _apply_all(session: Session, reports: list[StatusReport], now: datetime) -> None:
    """Lock the rows these reports touch, then apply each device's reports in its order."""
    slots = _locked_slots(session, {(r.device_id, r.slot) for r in reports})
    members = _locked_memberships(session, {r.device_id for r in reports})
    by_device: dict[str, list[StatusReport]] = defaultdict(list)
    for report in reports:
        by_device[report.device_id].append(report)
    for device_reports in by_device.values():
        for report in sorted(device_reports, key=_device_order):
            rollout, member = _membership(members, report)
            key = (report.device_id, report.slot)
            slot = slots[key]
            _update_slot(session, slot, report, rollout, now)
            if rollout is not None and member is not None:
                _update_member(rollout, member, report, now)
                session.add(member)
    # Flush while the rollouts are still referenced: the fleet epoch's check of a member's
    # state change reads its rollout from the session (`ferry.server.rollouts.tables`).
    session.flush()


def _device_order(report: StatusReport) -> tuple[int, str]:
    return (report.report_seq if report.report_seq is not None else -1, report.at)


def _locked_slots(
    session: Session, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], DeviceSlot]:
    """The slot rows, created first where missing (two first reports at once must not both
    INSERT), then locked."""
    rows_wanted = [{"device_id": d, "slot": s, "updated_at": ""} for d, s in sorted(keys)]
    session.exec(
        _insert(session)(DeviceSlot)
        .values(rows_wanted)
        .on_conflict_do_nothing(index_elements=["device_id", "slot"])
    )
    rows = session.exec(
        select(DeviceSlot)
        .where(tuple_(col(DeviceSlot.device_id), col(DeviceSlot.slot)).in_(keys))
        .order_by(col(DeviceSlot.device_id), col(DeviceSlot.slot))
        .with_for_update()
    ).all()
    return {(s.device_id, s.slot): s for s in rows}


def _locked_memberships(
    session: Session, device_ids: set[str]
) -> dict[str, list[tuple[Rollout, RolloutDevice]]]:
    """Each device's memberships, newest rollout first, locked (in one order: no deadlock)."""
    rows = session.exec(
        select(Rollout, RolloutDevice)
        .join(RolloutDevice, col(RolloutDevice.rollout_id) == col(Rollout.id))
        .where(col(RolloutDevice.device_id).in_(device_ids))
        .order_by(col(RolloutDevice.device_id), col(Rollout.id).desc())
        .with_for_update(of=RolloutDevice)
    ).all()
    found: dict[str, list[tuple[Rollout, RolloutDevice]]] = defaultdict(list)
    for rollout, member in rows:
        found[member.device_id].append((rollout, member))
    return found


def _membership(
    members: dict[str, list[tuple[Rollout, RolloutDevice]]], report: StatusReport
) -> tuple[Rollout | None, RolloutDevice | None]:
    """The rollout the report belongs to: named by the report, else the newest on its slot."""
    pk = parse_id(report.rollout_id) if report.rollout_id else None
    for rollout, member in members.get(report.device_id, []):
        if rollout.slot == report.slot and (pk is None or rollout.id == pk):
            return rollout, member
    return None, None


# How far through one update a state is. Reports without ``report_seq`` carry
# second-precision times and may arrive out of order (a batch over MQTT, the
# terminal one over HTTP), so within one second the state further on wins.
_AGENT_PROGRESS = {
    AgentState.IDLE: 0,
    AgentState.DOWNLOADING: 1,
    AgentState.VERIFYING: 2,
    AgentState.STAGED: 3,
    AgentState.SWITCHING: 4,
    AgentState.PROBING: 5,
}
_MEMBER_PROGRESS = {
    DeviceState.PENDING.value: 0,
    DeviceState.DOWNLOADING.value: 1,
    DeviceState.INSTALLING.value: 2,
}
_DONE = 9


def _order(last_seq: int | None, last_at: str, report: StatusReport) -> int:
    """-1: older than what the row applied, 1: newer, 0: the same second (no sequence)."""
    if report.report_seq is not None and last_seq is not None:
        return 1 if report.report_seq > last_seq else -1
    if report.at != last_at:
        return 1 if report.at > last_at else -1
    return 0


def _slot_stale(slot: DeviceSlot, report: StatusReport) -> bool:
    order = _order(slot.last_report_seq, slot.last_report_at, report)
    if order != 0:
        return order < 0
    last = next((s for s in AgentState if s.value == slot.state), None)
    return last is not None and _AGENT_PROGRESS.get(report.state, _DONE) < _AGENT_PROGRESS.get(
        last, _DONE
    )


def _member_stale(member: RolloutDevice, new: DeviceState, report: StatusReport) -> bool:
    order = _order(member.last_report_seq, member.last_report_at, report)
    if order != 0:
        return order < 0
    return _MEMBER_PROGRESS.get(new.value, _DONE) < _MEMBER_PROGRESS.get(member.state, _DONE)


def _highest(last: int | None, new: int | None) -> int | None:
    return new if last is None else last if new is None else max(last, new)


def _update_slot(
    session: Session, slot: DeviceSlot, report: StatusReport, rollout: Rollout | None, now: datetime
) -> None:
    """What the slot runs and holds; a stale report (see ``_slot_stale``) changes nothing."""
    if _slot_stale(slot, report):
        return
    if rollout is not None:
        slot.model = rollout.model
    if report.state is AgentState.COMMITTED and report.to_version is not None:
        slot.installed_version, slot.staged_version = report.to_version, None
    elif report.state is AgentState.STAGED:
        slot.staged_version = report.to_version
    elif report.state in (AgentState.ROLLED_BACK, AgentState.FAILED):
        slot.staged_version = None
        if report.from_version is not None:
            slot.installed_version = report.from_version
    slot.state, slot.updated_at = report.state.value, format_time(now)
    slot.last_report_at = report.at
    slot.last_report_seq = _highest(slot.last_report_seq, report.report_seq)
    session.add(slot)


def _update_member(
    rollout: Rollout, member: RolloutDevice, report: StatusReport, now: datetime
) -> None:
    """Move the device's rollout state; stale reports (see ``_member_stale``) are ignored."""
    new = AGENT_TO_DEVICE.get(report.state)
    if new is None or _member_stale(member, new, report):
        return
    if rollout.state == RolloutState.ROLLED_BACK and report.to_version == member.from_version:
        new = DeviceState.ROLLED_BACK if new is DeviceState.COMMITTED else None
    elif report.to_version not in (None, rollout.version):
        new = None
    if new is None:
        return
    member.state, member.error_code = new.value, report.error_code
    member.updated_at, member.last_report_at = format_time(now), report.at
    member.last_report_seq = _highest(member.last_report_seq, report.report_seq)
