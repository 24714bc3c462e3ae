"""Fleet and rollout gauges for ``/metrics``, counted in SQL at scrape time.

Read from the database rather than kept in memory, so every replica reports the
same fleet-wide figures (nothing only one replica knows). Labels are bounded:
states are fixed enums; ``model``/``slot``/``version`` grow with the registry, not with
the fleet; no device id is ever a label. Six GROUP BYs per scrape, served by indexes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from ferry.protocol.documents import AgentState
from ferry.protocol.timefmt import format_time, parse_time
from ferry.server.fleet.tables import Device, DeviceSlot
from ferry.server.rollouts.machine import ACTIVE, DeviceState, RolloutState
from ferry.server.rollouts.tables import Rollout, RolloutDevice

STUCK_STATES = (DeviceState.PENDING, DeviceState.DOWNLOADING, DeviceState.INSTALLING)


def fleet_gauges(
    engine: Engine, now: datetime, online_window_s: int
) -> Iterator[GaugeMetricFamily]:
    with Session(engine) as session:
        yield _devices(session, now, online_window_s)
        yield _slot_states(session)
        yield _installed(session)
        yield _rollouts(session)
        active = [
            r
            for r in session.exec(
                select(Rollout).where(col(Rollout.state).in_([s.value for s in ACTIVE]))
            ).all()
        ]
        yield _waves(active)
        yield from _rollout_devices(session, now)
        session.rollback()


def _devices(session: Session, now: datetime, window_s: int) -> GaugeMetricFamily:
    cutoff = format_time(now - timedelta(seconds=window_s))
    live = col(Device.revoked_at).is_(None)
    online = session.exec(
        select(func.count()).select_from(Device).where(live, col(Device.last_seen_at) >= cutoff)
    ).one()
    total = session.exec(select(func.count()).select_from(Device).where(live)).one()
    revoked = session.exec(select(func.count()).select_from(Device).where(~live)).one()
    family = GaugeMetricFamily(
        "ferry_devices",
        f"Enrolled devices: online (seen within {window_s} s), offline, revoked",
        labels=["status"],
    )
    for status, n in (("online", online), ("offline", total - online), ("revoked", revoked)):
        family.add_metric([status], n)
    return family


def _slot_states(session: Session) -> GaugeMetricFamily:
    rows = dict(
        session.exec(
            select(DeviceSlot.state, func.count())
            .join(Device, col(Device.id) == col(DeviceSlot.device_id))
            .where(col(Device.revoked_at).is_(None))
            .group_by(DeviceSlot.state)
        ).all()
    )
    family = GaugeMetricFamily(
        "ferry_device_slots",
        "Model slots of live devices by the agent state they last reported",
        labels=["state"],
    )
    for state in ["idle", *(s.value for s in AgentState)]:
        family.add_metric([state], rows.get(state, 0))
    return family


def _installed(session: Session) -> GaugeMetricFamily:
    rows = session.exec(
        select(DeviceSlot.model, DeviceSlot.slot, DeviceSlot.installed_version, func.count())
        .join(Device, col(Device.id) == col(DeviceSlot.device_id))
        .where(col(Device.revoked_at).is_(None), DeviceSlot.model != "")
        .group_by(DeviceSlot.model, DeviceSlot.slot, col(DeviceSlot.installed_version))
    ).all()
    family = GaugeMetricFamily(
        "ferry_devices_installed",
        "Live devices by the version they "
        'run, per model and slot (version="none": nothing committed)',
        labels=["model", "slot", "version"],
    )
    for model, slot, version, n in rows:
        family.add_metric([model, slot, str(version) if version is not None else "none"], n)
    return family


def _rollouts(session: Session) -> GaugeMetricFamily:
    rows = dict(session.exec(select(Rollout.state, func.count()).group_by(Rollout.state)).all())
    family = GaugeMetricFamily("ferry_rollouts", "Rollouts by state", labels=["state"])
    for state in RolloutState:
        family.add_metric([state.value], rows.get(state.value, 0))
    return family


def _waves(active: list[Rollout]) -> GaugeMetricFamily:
    """Waves of unfinished rollouts: done (passed), open (the current one), waiting."""
    counts = {"done": 0, "open": 0, "waiting": 0}
    for rollout in active:
        current = rollout.wave
        counts["done"] += max(0, current)
        counts["open"] += 1 if current >= 0 else 0
        counts["waiting"] += len(rollout.waves) - max(0, current) - (1 if current >= 0 else 0)
    family = GaugeMetricFamily(
        "ferry_rollout_waves",
        "Waves of unfinished rollouts (scheduled, running, paused, halted) by state",
        labels=["state"],
    )
    for state, n in counts.items():
        family.add_metric([state], n)
    return family


def _rollout_devices(session: Session, now: datetime) -> Iterator[GaugeMetricFamily]:
    """Devices of unfinished rollouts by state, and how long the oldest has sat in it."""
    active = [s.value for s in ACTIVE]
    rows = session.exec(
        select(RolloutDevice.state, func.count())
        .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
        .where(col(Rollout.state).in_(active))
        .group_by(RolloutDevice.state)
    ).all()
    counted = dict(rows)
    oldest_of = dict(
        session.exec(
            select(RolloutDevice.state, func.min(RolloutDevice.updated_at))
            .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
            .where(
                Rollout.state == RolloutState.RUNNING.value,
                col(RolloutDevice.wave) <= col(Rollout.wave),
                col(RolloutDevice.state).in_([s.value for s in STUCK_STATES]),
            )
            .group_by(RolloutDevice.state)
        ).all()
    )
    count = GaugeMetricFamily(
        "ferry_rollout_devices",
        "Devices of unfinished rollouts by their state in the rollout",
        labels=["state"],
    )
    age = GaugeMetricFamily(
        "ferry_rollout_device_state_oldest_seconds",
        "Seconds the "
        "longest-waiting device of an open wave of a running rollout has "
        "been in this state (0 when none is)",
        labels=["state"],
    )
    for state in DeviceState:
        count.add_metric([state.value], counted.get(state.value, 0))
        if state in STUCK_STATES:
            oldest = oldest_of.get(state.value)
            seconds = (now - parse_time(oldest)).total_seconds() if oldest else 0.0
            age.add_metric([state.value], max(0.0, seconds))
    yield count
    yield age
