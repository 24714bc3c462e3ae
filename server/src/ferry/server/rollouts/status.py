"""Sync status: per rollout and wave, and fleet-wide — all counted in SQL.

At 10,000 devices a status request is one GROUP BY over ``rollout_device`` (served
by the (rollout_id, wave, state) index) and one over ``device_slot``; Python only
folds the few resulting rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from ferry.protocol.timefmt import format_time, parse_time
from ferry.server.fleet.selectors import format_selector
from ferry.server.fleet.tables import Device, DeviceSlot
from ferry.server.rollouts.engine import (
    bake_left,
    cohort_counts,
    failure_limit_crossed,
    gate_passes,
)
from ferry.server.rollouts.machine import DeviceState, RolloutState, public_id, public_wave
from ferry.server.rollouts.tables import Rollout, RolloutDevice

STATES = [s.value for s in DeviceState]


def _rate(committed: int, total: int) -> float:
    return round(100.0 * committed / total, 2) if total else 0.0


def wave_table(session: Session, rollout: Rollout) -> list[dict[str, Any]]:
    """Counts by state for every wave (waves past the last percentage are left out)."""
    rows = session.exec(
        select(RolloutDevice.wave, RolloutDevice.state, func.count())
        .where(col(RolloutDevice.rollout_id) == rollout.id)
        .group_by(col(RolloutDevice.wave), col(RolloutDevice.state))
    ).all()
    waves: list[dict[str, Any]] = [
        {"wave": public_wave(k), "percent": p, "counts": dict.fromkeys(STATES, 0), "total": 0}
        for k, p in enumerate(rollout.waves)
    ]
    for wave, state, n in rows:
        if wave < len(waves):
            waves[wave]["counts"][state] = n
            waves[wave]["total"] += n
    for entry in waves:
        entry["success_rate"] = _rate(entry["counts"]["committed"], entry["total"])
    return waves


def gate_status(session: Session, rollout: Rollout, now: datetime) -> dict[str, Any]:
    """Where the current wave's gate stands, in the words an operator needs."""
    if rollout.state != RolloutState.RUNNING:
        return {"status": rollout.state, "reason": rollout.reason}
    counts = cohort_counts(session, rollout)
    aborting = rollout.gates().abort_reason(counts.final_by_type, counts.total)
    if failure_limit_crossed(rollout, counts) or aborting is not None:
        status = "failing"
    elif gate_passes(rollout, counts, now):
        status = "passing"
    else:
        status = "waiting"
    return {
        "status": status,
        "bake_left_s": bake_left(rollout, now),
        "committed": counts.committed,
        "devices": counts.total,
        "success_rate": _rate(counts.committed, counts.total),
        "min_success_pct": rollout.min_success_pct,
        "failures": counts.final_failures,
        "max_failures": rollout.max_failures,
        "max_failure_pct": rollout.max_failure_pct,
    }


def rollout_public(rollout: Rollout) -> dict[str, Any]:
    return {
        "id": public_id(rollout.id or 0),
        "namespace": rollout.namespace,
        "model": rollout.model,
        "version": rollout.version,
        "slot": rollout.slot,
        "manifest_sha256": rollout.manifest_sha256,
        "selector": format_selector(rollout.selector),
        "waves": rollout.waves,
        "wave_seed": rollout.wave_seed(),
        "state": rollout.state,
        "wave": public_wave(rollout.wave),
        "wave_started_at": rollout.wave_started_at,
        "reason": rollout.reason,
        "gates": rollout.gates().to_dict(),
        "auto_rollback": rollout.auto_rollback,
        "start_at": rollout.start_at,
        "created_by": rollout.created_by,
        "created_at": rollout.created_at,
        "updated_at": rollout.updated_at,
    }


def rollout_status(session: Session, rollout: Rollout, now: datetime) -> dict[str, Any]:
    waves = wave_table(session, rollout)
    totals = dict.fromkeys(STATES, 0)
    for entry in waves:
        for state, n in entry["counts"].items():
            totals[state] += n
    in_wave = (
        int((now - parse_time(rollout.wave_started_at)).total_seconds())
        if rollout.wave_started_at and rollout.state == RolloutState.RUNNING
        else None
    )
    devices = sum(totals.values())
    return {
        "rollout": rollout_public(rollout),
        "at": format_time(now),
        "waves": waves,
        "totals": totals,
        "devices": devices,
        "success_rate": _rate(totals["committed"], devices),
        "time_in_wave_s": in_wave,
        "gate": gate_status(session, rollout, now),
    }


def fleet_status(
    session: Session, namespaces: list[str] | None, now: datetime, online_window_s: int
) -> dict[str, Any]:
    """Device counts and the distribution of installed versions per model."""
    scope = [] if namespaces is None else [col(Device.namespace).in_(namespaces)]
    cutoff = format_time(now - timedelta(seconds=online_window_s))
    total = session.exec(
        select(func.count()).select_from(Device).where(col(Device.revoked_at).is_(None), *scope)
    ).one()
    revoked = session.exec(
        select(func.count()).select_from(Device).where(col(Device.revoked_at).is_not(None), *scope)
    ).one()
    online = session.exec(
        select(func.count())
        .select_from(Device)
        .where(col(Device.revoked_at).is_(None), col(Device.last_seen_at) >= cutoff, *scope)
    ).one()
    rows = session.exec(
        select(DeviceSlot.model, DeviceSlot.slot, DeviceSlot.installed_version, func.count())
        .join(Device, col(Device.id) == col(DeviceSlot.device_id))
        .where(col(Device.revoked_at).is_(None), DeviceSlot.model != "", *scope)
        .group_by(col(DeviceSlot.model), col(DeviceSlot.slot), col(DeviceSlot.installed_version))
    ).all()
    models: dict[str, dict[str, Any]] = {}
    for model, slot, version, n in rows:
        entry = models.setdefault(
            f"{model}#{slot}", {"model": model, "slot": slot, "versions": {}, "without_version": {}}
        )
        entry["versions"][str(version) if version is not None else "none"] = n
    for model, slot, state, n in session.exec(
        select(DeviceSlot.model, DeviceSlot.slot, DeviceSlot.state, func.count())
        .join(Device, col(Device.id) == col(DeviceSlot.device_id))
        .where(
            col(Device.revoked_at).is_(None),
            DeviceSlot.model != "",
            col(DeviceSlot.installed_version).is_(None),
            *scope,
        )
        .group_by(DeviceSlot.model, DeviceSlot.slot, DeviceSlot.state)
    ).all():
        # "none" says nothing is installed; this says why (e.g. the first install rolled back)
        models[f"{model}#{slot}"]["without_version"][state] = n
    return {
        "at": format_time(now),
        "devices": total,
        "revoked": revoked,
        "online": online,
        "online_window_s": online_window_s,
        "models": sorted(models.values(), key=lambda m: (m["model"], m["slot"])),
    }
