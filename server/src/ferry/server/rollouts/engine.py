"""Gate evaluation: the loop that advances, completes or halts running rollouts.

`tick` is one pass; the app's lifespan runs it every ``FERRY_ROLLOUT_TICK_S``
seconds in a worker thread. Each rollout is evaluated in its own transaction that
first locks the rollout row — ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so a
second replica skips a rollout the first is evaluating and, coming later, sees
the committed result (a new wave with a fresh bake clock) instead of evaluating
the old wave again. On SQLite the immediate transaction serialises the same way.
Nothing is kept in memory between ticks: a restarted server carries on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, String, cast, func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from ferry.protocol.timefmt import format_time, parse_time
from ferry.server.core import epoch
from ferry.server.core.db import session_scope
from ferry.server.fleet.runtime import FleetRuntime
from ferry.server.fleet.selectors import announce_groups
from ferry.server.rollouts import service
from ferry.server.rollouts.machine import (
    FAILURES,
    IN_PROGRESS,
    DeviceState,
    RolloutState,
    public_id,
    public_wave,
)
from ferry.server.rollouts.tables import Rollout, RolloutDevice

log = logging.getLogger("ferry.server.rollouts")
ACTOR = service.ENGINE_ACTOR
_EVALUATED = [RolloutState.SCHEDULED, RolloutState.RUNNING]
_SILENT = [RolloutState.SCHEDULED, RolloutState.CANCELLED]
STARTED = f"{RolloutState.RUNNING.value}:0:"  # the mark of a rollout in its first wave


@dataclass(frozen=True)
class WaveCounts:
    """The cumulative cohort of waves 0..k, counted with one GROUP BY."""

    total: int
    committed: int
    final_failures: int  # failed, rolled back or timed out with no retry left
    final_by_type: dict[str, int]  # the same, per device state

    def success_pct(self) -> float:
        return 100.0 if self.total == 0 else 100.0 * self.committed / self.total


def cohort_counts(session: Session, rollout: Rollout) -> WaveCounts:
    exhausted = col(RolloutDevice.attempts) >= rollout.max_retries
    rows = session.exec(
        select(RolloutDevice.state, exhausted, func.count())
        .where(RolloutDevice.rollout_id == rollout.id, col(RolloutDevice.wave) <= rollout.wave)
        .group_by(RolloutDevice.state, exhausted)
    ).all()
    failures = {s.value for s in FAILURES}
    by_type = {s: sum(n for state, done, n in rows if state == s and done) for s in failures}
    return WaveCounts(
        total=sum(n for _, _, n in rows),
        committed=sum(n for state, _, n in rows if state == DeviceState.COMMITTED),
        final_failures=sum(by_type.values()),
        final_by_type=by_type,
    )


def failure_limit_crossed(rollout: Rollout, counts: WaveCounts) -> bool:
    return rollout.gates().failure_limit_crossed(counts.final_failures, counts.total)


def bake_left(rollout: Rollout, now: datetime) -> int:
    if rollout.wave_started_at is None:
        return rollout.bake_s
    baked = (now - parse_time(rollout.wave_started_at)).total_seconds()
    return max(0, int(rollout.bake_s - baked))


def gate_passes(rollout: Rollout, counts: WaveCounts, now: datetime) -> bool:
    return rollout.gates().passes(counts.committed, counts.total, bake_left(rollout, now))


def time_out_silent(session: Session, rollout: Rollout, now: datetime) -> None:
    """Devices silent for too long count as ``timed_out``: no state sticks for ever.

    Mid-update (``timed_out``), and also ``pending`` in an opened wave (``never_started``):
    a device that is offline, or that never fetched the document naming this rollout,
    would otherwise hold its wave's gate open for ever.
    """
    cutoff = format_time(now - timedelta(seconds=rollout.in_progress_timeout_s))
    session.exec(
        update(RolloutDevice)
        .where(
            col(RolloutDevice.rollout_id) == rollout.id,
            col(RolloutDevice.state).in_([s.value for s in IN_PROGRESS]),
            col(RolloutDevice.updated_at) < cutoff,
        )
        .values(
            state=DeviceState.TIMED_OUT.value, error_code="timed_out", updated_at=format_time(now)
        )
    )
    if rollout.wave_started_at is None or rollout.wave_started_at >= cutoff:
        return  # the newest wave opened less than a timeout ago: its pending may still start
    session.exec(
        update(RolloutDevice)
        .where(
            col(RolloutDevice.rollout_id) == rollout.id,
            col(RolloutDevice.state) == DeviceState.PENDING.value,
            col(RolloutDevice.wave) <= rollout.wave,
            col(RolloutDevice.updated_at) < cutoff,
        )
        .values(
            state=DeviceState.TIMED_OUT.value,
            error_code="never_started",
            updated_at=format_time(now),
        )
    )


def schedule_retries(session: Session, rollout: Rollout, now: datetime) -> int:
    """Failed devices with attempts left go back to pending after an exponential backoff."""
    if rollout.max_retries == 0:
        return 0
    rows = session.exec(
        select(RolloutDevice).where(
            RolloutDevice.rollout_id == rollout.id,
            col(RolloutDevice.wave) <= rollout.wave,
            col(RolloutDevice.state).in_([s.value for s in FAILURES]),
            col(RolloutDevice.attempts) < rollout.max_retries,
        )
    ).all()
    stamp, retried = format_time(now), 0
    for row in rows:
        wait = timedelta(seconds=rollout.retry_backoff_s * 2**row.attempts)
        if parse_time(row.updated_at) + wait <= now:
            row.state, row.attempts, row.updated_at = (
                DeviceState.PENDING.value,
                row.attempts + 1,
                stamp,
            )
            row.last_report_at = stamp
            session.add(row)
            retried += 1
    if retried:
        rollout.retry_generation += 1
        session.add(rollout)
    return retried


def evaluate(session: Session, rollout: Rollout, now: datetime) -> str:
    """One gate evaluation of one locked rollout; returns the decision (for the metrics):
    ``start``, ``wait``, ``advance``, ``complete`` or ``halt``."""
    if rollout.state == RolloutState.SCHEDULED:
        if rollout.start_at is None or rollout.start_at <= format_time(now):
            service.transition(
                session,
                rollout,
                RolloutState.RUNNING,
                actor=ACTOR,
                now=now,
                wave=0,
                reason="start time reached",
            )
            return "start"
        return "wait"
    time_out_silent(session, rollout, now)
    schedule_retries(session, rollout, now)
    counts = cohort_counts(session, rollout)
    abort = rollout.gates().abort_reason(counts.final_by_type, counts.total)
    if failure_limit_crossed(rollout, counts) or abort is not None:
        reason = (
            f"abort criterion crossed in wave {public_wave(rollout.wave)}: {abort}"
            if abort is not None and not failure_limit_crossed(rollout, counts)
            else f"failure limit crossed in wave {public_wave(rollout.wave)}: "
            f"{counts.final_failures} of {counts.total} devices failed"
        )
        service.transition(
            session, rollout, RolloutState.HALTED, actor=ACTOR, now=now, reason=reason
        )
        if rollout.auto_rollback:
            service.rollback(session, ACTOR, rollout, now, reason="automatic rollback on halt")
        return "halt"
    if rollout.gates().unreachable(counts.committed, counts.final_failures, counts.total):
        service.transition(
            session,
            rollout,
            RolloutState.HALTED,
            actor=ACTOR,
            now=now,
            reason=f"the gate can no longer pass in wave {rollout.wave}: "
            f"{counts.final_failures} of {counts.total} devices failed "
            f"for good and {rollout.min_success_pct} % must commit",
        )
        if rollout.auto_rollback:
            service.rollback(session, ACTOR, rollout, now, reason="automatic rollback on halt")
        return "halt"
    if gate_passes(rollout, counts, now):
        last = rollout.wave + 1 >= len(rollout.waves)
        service.advance(
            session,
            ACTOR,
            rollout,
            now,
            reason=f"gate passed: {counts.committed}/{counts.total} committed",
        )
        return "complete" if last else "advance"
    return "wait"


def lock_for_evaluation(session: Session, rollout_pk: int) -> Rollout | None:
    """The rollout row, or None when another replica holds it right now."""
    return session.exec(
        select(Rollout)
        .where(Rollout.id == rollout_pk, col(Rollout.state).in_(_EVALUATED))
        .with_for_update(skip_locked=True)
    ).first()


def tick(
    engine: Engine, runtime: FleetRuntime, record: Callable[[str], None] | None = None
) -> None:
    """Evaluate every due rollout once, then announce whatever changed; ``record`` gets
    each gate decision once its transaction committed."""
    now = runtime.now()
    with session_scope(engine) as session:
        due = session.exec(select(Rollout.id).where(col(Rollout.state).in_(_EVALUATED))).all()
    for pk in due:
        try:
            with session_scope(engine) as session:
                rollout = lock_for_evaluation(session, pk or 0)
                decision = evaluate(session, rollout, now) if rollout is not None else None
            if decision is not None and record is not None:
                record(decision)
        except Exception:  # one broken rollout must not stop the others
            log.exception("gate evaluation of %s failed", public_id(pk or 0))
    announce_changes(engine, runtime)


def marker(rollout: Rollout) -> str:
    return f"{rollout.state}:{rollout.wave}:{rollout.retry_generation}"


def _marker_sql() -> ColumnElement[str]:
    """`marker` as SQL, so finding unannounced rollouts is an indexed-size query."""
    return (
        col(Rollout.state)
        + ":"
        + cast(col(Rollout.wave), String)
        + ":"
        + cast(col(Rollout.retry_generation), String)
    )


def announce_changes(engine: Engine, runtime: FleetRuntime) -> None:
    """Publish one notice per changed rollout.

    A replica first claims the change with a conditional UPDATE of the mark, so of
    two replicas only one publishes; a failed publish puts the old mark back and
    the next tick tries again (devices poll meanwhile).
    """
    with session_scope(engine) as session:
        rows = session.exec(select(Rollout).where(col(Rollout.announced) != _marker_sql())).all()
        pending = [(r.id or 0, r.announced, marker(r), r.state, dict(r.selector)) for r in rows]
        # Read after the changes committed: a device that sends it back bypasses a replica's
        # cache that has not seen this epoch yet (docs/rollouts.md, "Push across replicas").
        now_epoch = session.connection().execute(epoch.READ).scalar_one() if pending else None
    for pk, old, new, state, selector in pending:
        if not _set_mark(engine, pk, old, new) or state in _SILENT:
            continue
        if new.startswith(STARTED) and not old.startswith(STARTED):
            runtime.start_hook.rollout_started(pk)
        try:
            runtime.notifier.announce(announce_groups(selector), public_id(pk), now_epoch)
        except Exception:
            log.exception("announcing %s failed; retrying on the next tick", public_id(pk))
            _set_mark(engine, pk, new, old)


def _set_mark(engine: Engine, pk: int, old: str, new: str) -> bool:
    with session_scope(engine) as session:
        result = session.exec(
            update(Rollout)
            .where(col(Rollout.id) == pk, col(Rollout.announced) == old)
            .values(announced=new)
        )
        return bool(result.rowcount == 1)
