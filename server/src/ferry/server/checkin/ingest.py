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

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Insert, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel, col, select

from ferry.protocol.documents import AgentState, StatusReport
from ferry.protocol.timefmt import format_time, parse_time, utcnow
from ferry.server.core import epoch
from ferry.server.core.errors import ForbiddenError, UnauthenticatedError
from ferry.server.fleet.tables import Device, DeviceReport, DeviceSlot
from ferry.server.rollouts.machine import AGENT_TO_DEVICE, DeviceState, RolloutState, parse_id
from ferry.server.rollouts.tables import Rollout, RolloutDevice, member_state_counts

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
    if _postgres(session):
        return _store_from_arrays(session, rows)
    # executemany with RETURNING: one cached statement, batched into multi-row VALUES.
    returned = session.connection().execute(_insert_ignoring_duplicates(), rows)
    return set(returned.scalars())


def _store_from_arrays(session: Session, rows: list[dict[str, Any]]) -> set[str]:
    """PostgreSQL: the same INSERT with one array per column, a text independent of the
    batch's size (a multi-row VALUES of 200 reports is 2,800 parameters to parse)."""
    names = tuple(rows[0])
    statement = text(
        f"INSERT INTO device_report ({', '.join(names)}) "
        f"SELECT * FROM {_unnest(_table(DeviceReport), names)} "
        "ON CONFLICT (report_id) DO NOTHING RETURNING report_id"
    )
    arrays = {n: [json.dumps(r[n]) if n == "timings" else r[n] for r in rows] for n in names}
    return set(session.connection().execute(statement, arrays).scalars())


def _table(model: type[SQLModel]) -> sa.Table:
    table: sa.Table = model.__table__  # type: ignore[attr-defined]
    return table


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _unnest(table: sa.Table, names: Sequence[str]) -> str:
    """``unnest(CAST(:a AS text[]), …) AS v (a, …)``: rows from one array parameter per
    column of ``table`` (PostgreSQL); the casts type arrays that hold only NULLs."""
    arrays = ", ".join(f"CAST(:{name} AS {_array_type(table.c[name])}[])" for name in names)
    return f"unnest({arrays}) AS v ({', '.join(names)})"


def _array_type(column: sa.Column[Any]) -> str:
    if isinstance(column.type, sa.Integer):
        return "integer"
    return "json" if isinstance(column.type, sa.JSON) else "text"


def _insert_ignoring_duplicates() -> Insert:
    """SQLite's INSERT of reports (PostgreSQL: `_store_from_arrays`)."""
    statement: Insert = (
        sqlite.insert(DeviceReport)
        .on_conflict_do_nothing(index_elements=["report_id"])
        .returning(col(DeviceReport.report_id))
    )
    return statement


def _apply_all(session: Session, reports: list[StatusReport], now: datetime) -> None:
    """Lock the rows these reports touch, apply each device's reports in its order to
    copies of them, then write the changed rows with one statement per table."""
    slots = _locked_slots(session, {(r.device_id, r.slot) for r in reports})
    members = _locked_memberships(session, {r.device_id for r in reports})
    by_device: dict[str, list[StatusReport]] = defaultdict(list)
    for report in reports:
        by_device[report.device_id].append(report)
    for device_reports in by_device.values():
        for report in sorted(device_reports, key=_device_order):
            member = _membership(members, report)
            _update_slot(slots[(report.device_id, report.slot)], report, member, now)
            if member is not None:
                _update_member(member, report, now)
    _write(session, DeviceSlot, _SLOT_KEYS, _SLOT_SET, [s for s in slots.values() if s.dirty])
    moved = [m for ms in members.values() for m in ms if m.dirty]
    _write(session, RolloutDevice, _MEMBER_KEYS, _MEMBER_SET, moved)
    if any(m.state != m.loaded_state and member_state_counts(m.rollout_state) for m in moved):
        epoch.mark_changed(session, RolloutDevice)


def _device_order(report: StatusReport) -> tuple[int, str]:
    return (report.report_seq if report.report_seq is not None else -1, report.at)


@dataclass
class _Slot:
    """A locked ``device_slot`` row, changed in memory by the batch's reports."""

    device_id: str
    slot: str
    model: str
    installed_version: int | None
    staged_version: int | None
    state: str
    updated_at: str
    last_report_at: str
    last_report_seq: int | None
    dirty: bool = False


@dataclass
class _Member:
    """A locked ``rollout_device`` row and what ingest needs of its rollout."""

    rollout_id: int
    device_id: str
    state: str
    from_version: int | None
    error_code: str | None
    updated_at: str
    last_report_at: str
    last_report_seq: int | None
    rollout_slot: str
    rollout_model: str
    rollout_version: int
    rollout_state: str
    loaded_state: str = field(init=False)  # as locked: did the batch change it?
    dirty: bool = False

    def __post_init__(self) -> None:
        self.loaded_state = self.state


_SLOT_KEYS = ("device_id", "slot")
_SLOT_SET = (
    "model",
    "installed_version",
    "staged_version",
    "state",
    "updated_at",
    "last_report_at",
    "last_report_seq",
)
_MEMBER_KEYS = ("rollout_id", "device_id")
_MEMBER_SET = ("state", "error_code", "updated_at", "last_report_at", "last_report_seq")


def _locked_slots(session: Session, keys: set[tuple[str, str]]) -> dict[tuple[str, str], _Slot]:
    """The slot rows, created first where missing (two first reports at once must not both
    INSERT), then locked in key order and read as plain values (no ORM objects)."""
    ordered = sorted(keys)
    table = _table(DeviceSlot).c
    connection = session.connection()
    params: dict[str, list[str]] = {}
    if _postgres(session):
        # The keys as two arrays: statements whose text does not grow with the batch.
        params = {"device_id": [d for d, _ in ordered], "slot": [s for _, s in ordered]}
        wanted = _pg_slot_keys()
        chosen = sa.select(wanted.c.device_id, wanted.c.slot)
        connection.execute(
            postgresql.insert(DeviceSlot)
            .from_select([*_SLOT_KEYS, "updated_at"], chosen.add_columns(sa.literal("")))
            .on_conflict_do_nothing(index_elements=_SLOT_KEYS),
            params,
        )
        where = tuple_(table.device_id, table.slot).in_(chosen)
    else:
        # executemany: one cached statement (a multi-row VALUES would be compiled per batch).
        connection.execute(
            sqlite.insert(DeviceSlot).on_conflict_do_nothing(index_elements=_SLOT_KEYS),
            [{"device_id": d, "slot": s, "updated_at": ""} for d, s in ordered],
        )
        where = tuple_(table.device_id, table.slot).in_(keys)
    rows = connection.execute(
        sa.select(*(table[name] for name in (*_SLOT_KEYS, *_SLOT_SET)))
        .where(where)
        .order_by(table.device_id, table.slot)
        .with_for_update(),
        params,
    )
    return {(row.device_id, row.slot): _Slot(*row) for row in rows}


def _pg_slot_keys() -> sa.TableValuedAlias:
    """``unnest(:device_id, :slot)`` as a table (PostgreSQL)."""
    arrays = (sa.bindparam(name, type_=postgresql.ARRAY(sa.Text)) for name in _SLOT_KEYS)
    return sa.func.unnest(*arrays).table_valued(*_SLOT_KEYS).render_derived()


def _locked_memberships(session: Session, device_ids: set[str]) -> dict[str, list[_Member]]:
    """Each device's memberships, newest rollout first, locked (in one order: no deadlock)."""
    rows = session.connection().execute(
        sa.select(
            col(RolloutDevice.rollout_id),
            col(RolloutDevice.device_id),
            col(RolloutDevice.state),
            col(RolloutDevice.from_version),
            col(RolloutDevice.error_code),
            col(RolloutDevice.updated_at),
            col(RolloutDevice.last_report_at),
            col(RolloutDevice.last_report_seq),
            col(Rollout.slot),
            col(Rollout.model),
            col(Rollout.version),
            col(Rollout.state),
        )
        .join(Rollout, col(RolloutDevice.rollout_id) == col(Rollout.id))
        .where(col(RolloutDevice.device_id).in_(device_ids))
        .order_by(col(RolloutDevice.device_id), col(Rollout.id).desc())
        .with_for_update(of=_table(RolloutDevice))
    )
    found: dict[str, list[_Member]] = defaultdict(list)
    for row in rows:
        found[row.device_id].append(_Member(*tuple(row)))
    return found


def _write(
    session: Session,
    model: type[SQLModel],
    keys: Sequence[str],
    columns: Sequence[str],
    rows: Sequence[Any],
) -> None:
    """Write ``columns`` of the changed ``rows`` of ``table``, matched on ``keys``.

    PostgreSQL: one ``UPDATE … FROM unnest(arrays)``, whose text does not depend on the
    batch (parsed once per connection, not per batch as a multi-row ``VALUES`` would be).
    SQLite: the same UPDATE per row, in one executemany (SQLite has no arrays). The rows
    are locked already, so the order the database updates them in cannot deadlock."""
    if not rows:
        return
    names = (*keys, *columns)
    assignments = ", ".join(f"{name} = v.{name}" for name in columns)
    table = _table(model)
    if _postgres(session):
        matches = " AND ".join(f"{table.name}.{name} = v.{name}" for name in keys)
        arrays = _unnest(table, names)
        statement = text(f"UPDATE {table.name} SET {assignments} FROM {arrays} WHERE {matches}")
        session.connection().execute(statement, {n: [getattr(r, n) for r in rows] for n in names})
        return
    assignments = ", ".join(f"{name} = :{name}" for name in columns)
    matches = " AND ".join(f"{name} = :{name}" for name in keys)
    statement = text(f"UPDATE {table.name} SET {assignments} WHERE {matches}")
    session.connection().execute(statement, [{n: getattr(r, n) for n in names} for r in rows])


def _membership(members: dict[str, list[_Member]], report: StatusReport) -> _Member | None:
    """The rollout the report belongs to: named by the report, else the newest on its slot."""
    pk = parse_id(report.rollout_id) if report.rollout_id else None
    for member in members.get(report.device_id, []):
        if member.rollout_slot == report.slot and (pk is None or member.rollout_id == pk):
            return member
    return None


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


def _slot_stale(slot: _Slot, report: StatusReport) -> bool:
    order = _order(slot.last_report_seq, slot.last_report_at, report)
    if order != 0:
        return order < 0
    last = next((s for s in AgentState if s.value == slot.state), None)
    return last is not None and _AGENT_PROGRESS.get(report.state, _DONE) < _AGENT_PROGRESS.get(
        last, _DONE
    )


def _member_stale(member: _Member, new: DeviceState, report: StatusReport) -> bool:
    order = _order(member.last_report_seq, member.last_report_at, report)
    if order != 0:
        return order < 0
    return _MEMBER_PROGRESS.get(new.value, _DONE) < _MEMBER_PROGRESS.get(member.state, _DONE)


def _highest(last: int | None, new: int | None) -> int | None:
    return new if last is None else last if new is None else max(last, new)


def _update_slot(slot: _Slot, report: StatusReport, member: _Member | None, now: datetime) -> None:
    """What the slot runs and holds; a stale report (see ``_slot_stale``) changes nothing."""
    if _slot_stale(slot, report):
        return
    if member is not None:
        slot.model = member.rollout_model
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
    slot.dirty = True


def _update_member(member: _Member, report: StatusReport, now: datetime) -> None:
    """Move the device's rollout state; stale reports (see ``_member_stale``) are ignored."""
    new = AGENT_TO_DEVICE.get(report.state)
    if new is None or _member_stale(member, new, report):
        return
    if (
        member.rollout_state == RolloutState.ROLLED_BACK
        and report.to_version == member.from_version
    ):
        new = DeviceState.ROLLED_BACK if new is DeviceState.COMMITTED else None
    elif report.to_version not in (None, member.rollout_version):
        new = None
    if new is None:
        return
    member.state, member.error_code = new.value, report.error_code
    member.updated_at, member.last_report_at = format_time(now), report.at
    member.last_report_seq = _highest(member.last_report_seq, report.report_seq)
    member.dirty = True
