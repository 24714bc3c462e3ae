"""Status report ingest, shared by ``POST /device/status`` and the MQTT subscriber.

Idempotent by ``report_id``: a report already stored (resent after an offline
spell, or received over both MQTT and HTTP) is counted as a duplicate and not
applied again. Each insert runs in a savepoint, so a concurrent copy of the same
report that wins the race on another replica also ends up a duplicate here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ferry.protocol.documents import AgentState, StatusReport
from ferry.protocol.timefmt import format_time, parse_time, utcnow
from ferry.server.core.errors import ForbiddenError, UnauthenticatedError
from ferry.server.fleet.tables import Device, DeviceReport, DeviceSlot
from ferry.server.rollouts.machine import AGENT_TO_DEVICE, DeviceState, RolloutState, parse_id
from ferry.server.rollouts.tables import Rollout, RolloutDevice

MAX_REPORTS = 500


@dataclass
class IngestResult:
    """Which reports were applied now and which had been seen before."""

    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    lags_s: list[float] = field(default_factory=list)  # ingest time minus the report's own


def ingest_reports(session: Session, device_id: str, reports: Sequence[StatusReport],
                   now: datetime | None = None) -> IngestResult:
    """Store and apply ``reports`` from ``device_id`` in the caller's transaction."""
    now = now or utcnow()
    device = session.get(Device, device_id)
    if device is None or device.revoked_at is not None:
        raise UnauthenticatedError("unknown or revoked device")
    strangers = sorted({r.device_id for r in reports if r.device_id != device_id})
    if strangers:
        raise ForbiddenError(f"device '{device_id}' may only report for itself",
                             {"device_ids": strangers})
    result = IngestResult()
    seen = set(session.exec(select(DeviceReport.report_id).where(
        col(DeviceReport.report_id).in_([r.report_id for r in reports]))).all())
    for report in reports:
        if report.report_id in seen or not _store(session, report, now):
            result.duplicates.append(report.report_id)
            continue
        seen.add(report.report_id)
        _apply(session, report, now)
        result.accepted.append(report.report_id)
        result.lags_s.append(_lag(report, now))
    device.last_seen_at = format_time(now)
    session.add(device)
    session.flush()
    return result


def _lag(report: StatusReport, now: datetime) -> float:
    """Seconds from the report's timestamp to now (a device clock ahead of ours gives 0)."""
    try:
        return max(0.0, (now - parse_time(report.at)).total_seconds())
    except ValueError:
        return 0.0


def _store(session: Session, report: StatusReport, now: datetime) -> bool:
    row = DeviceReport(report_id=report.report_id, device_id=report.device_id, slot=report.slot,
                       state=report.state.value, at=report.at, from_version=report.from_version,
                       to_version=report.to_version, error_code=report.error_code,
                       detail=report.detail, rollout_id=report.rollout_id,
                       sequence=report.sequence, timings=dict(report.timings),
                       received_at=format_time(now))
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return False
    return True


def _apply(session: Session, report: StatusReport, now: datetime) -> None:
    rollout, member = _membership(session, report)
    _update_slot(session, report, rollout, now)
    if rollout is not None and member is not None:
        _update_member(rollout, member, report, now)
        session.add(member)


def _update_slot(session: Session, report: StatusReport, rollout: Rollout | None,
                 now: datetime) -> None:
    slot = session.get(DeviceSlot, (report.device_id, report.slot)) or DeviceSlot(
        device_id=report.device_id, slot=report.slot)
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
    session.add(slot)


def _membership(session: Session, report: StatusReport
                ) -> tuple[Rollout | None, RolloutDevice | None]:
    """The rollout the report belongs to: named by the report, else the newest on its slot."""
    pk = parse_id(report.rollout_id) if report.rollout_id else None
    stmt = (select(Rollout, RolloutDevice)
            .join(RolloutDevice, col(RolloutDevice.rollout_id) == col(Rollout.id))
            .where(RolloutDevice.device_id == report.device_id, Rollout.slot == report.slot))
    stmt = stmt.where(Rollout.id == pk) if pk is not None else stmt
    row = session.exec(stmt.order_by(col(Rollout.id).desc()).limit(1)).first()
    return (row[0], row[1]) if row is not None else (None, None)


# How far through one update a device state is. Reports carry second-precision
# times and may arrive out of order (a batch over MQTT, the terminal one over
# HTTP), so within one second the further state wins.
_PROGRESS = {DeviceState.PENDING: 0, DeviceState.DOWNLOADING: 1, DeviceState.INSTALLING: 2}


def _is_stale(member: RolloutDevice, new: DeviceState, report: StatusReport) -> bool:
    """An older report than the last applied, or one of the same second that goes backwards."""
    if report.at != member.last_report_at:
        return report.at < member.last_report_at
    return _PROGRESS.get(new, 3) < _PROGRESS.get(DeviceState(member.state), 3)


def _update_member(rollout: Rollout, member: RolloutDevice, report: StatusReport,
                   now: datetime) -> None:
    """Move the device's rollout state; stale reports (see ``_is_stale``) are ignored."""
    new = AGENT_TO_DEVICE.get(report.state)
    if new is None or _is_stale(member, new, report):
        return
    if rollout.state == RolloutState.ROLLED_BACK and report.to_version == member.from_version:
        new = DeviceState.ROLLED_BACK if new is DeviceState.COMMITTED else None
    elif report.to_version not in (None, rollout.version):
        new = None
    if new is None:
        return
    member.state, member.error_code = new.value, report.error_code
    member.updated_at, member.last_report_at = format_time(now), report.at
