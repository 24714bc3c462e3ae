"""Creating rollouts and the operator actions on them.

Every function runs inside the caller's transaction and records the change in
the audit log and as a ``rollout.state_changed`` event in that transaction. The
row is read ``FOR UPDATE`` before any change, so an operator action and the gate
engine on another replica never both act on one state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from ferry.protocol.errors import MalformedError
from ferry.protocol.gates import GatePolicy
from ferry.protocol.timefmt import format_time, parse_time
from ferry.server.audit import service as audit
from ferry.server.auth.service import Principal
from ferry.server.core.errors import ConflictError, NotFoundError, ValidationFailedError
from ferry.server.core.numbers import ascii_int
from ferry.server.fleet.events import DeviceRevoked
from ferry.server.fleet.selectors import (
    Selector,
    canary_only,
    format_selector,
    hardware_filter,
    matches,
    selectors_overlap,
)
from ferry.server.fleet.tables import Device, DeviceSlot
from ferry.server.registry.tables import ModelAlias, ModelVersion, Namespace, RegisteredModel
from ferry.server.rollouts.machine import (
    ACTIVE,
    FAILURES,
    TOOK_VERSION,
    DeviceState,
    IllegalTransitionError,
    RolloutState,
    check_transition,
    parse_id,
    public_id,
    public_wave,
)
from ferry.server.rollouts.tables import Rollout, RolloutDevice
from ferry.server.webhooks.service import ROLLOUT_STATE_CHANGED, emit_event

ENGINE_ACTOR = "server:rollout-engine"
MAX_LISTED = 50
INSERT_BATCH = 1000


@dataclass(frozen=True)
class RolloutSpec:
    """What an operator (or an alias binding's template) asks for."""

    namespace: str
    model: str
    version: str  # a number or an alias
    selector: Selector
    waves: list[int]
    slot: str = "main"
    gates: GatePolicy = field(default_factory=GatePolicy)
    auto_rollback: bool = False
    start_at: str | None = None
    start_paused: bool = False
    skip_incompatible: bool = False  # target the compatible devices, list the others as skipped
    allow_empty: bool = False  # a selector that matches no device is refused unless asked


# --- lookups ------------------------------------------------------------------------


def resolve_model(session: Session, namespace: str, name: str) -> RegisteredModel:
    model = session.exec(
        select(RegisteredModel)
        .join(Namespace, col(Namespace.id) == col(RegisteredModel.namespace_id))
        .where(Namespace.name == namespace, RegisteredModel.name == name)
    ).first()
    if model is None:
        raise NotFoundError(f"model '{namespace}/{name}' does not exist")
    return model


def resolve_version(session: Session, model: RegisteredModel, ref: str) -> ModelVersion:
    """``ref`` is a version number or an alias of ``model``."""
    stmt = select(ModelVersion).where(ModelVersion.model_id == model.id)
    if (number := ascii_int(ref)) is not None:
        stmt = stmt.where(ModelVersion.version == number)
    else:
        stmt = stmt.join(ModelAlias, col(ModelAlias.version_id) == col(ModelVersion.id)).where(
            ModelAlias.alias == ref
        )
    row = session.exec(stmt).first()
    if row is None:
        raise NotFoundError(f"model '{model.name}' has no version or alias '{ref}'")
    return row


def get_rollout(
    session: Session, viewer: Principal, rollout_id: str, *, lock: bool = False
) -> Rollout:
    """The rollout, read FOR UPDATE when ``lock``; 404 outside the viewer's namespaces."""
    pk = parse_id(rollout_id)
    row = None
    if pk is not None:
        stmt = select(Rollout).where(Rollout.id == pk)
        row = session.exec(stmt.with_for_update() if lock else stmt).first()
    if row is None or not viewer.in_namespace(row.namespace):
        raise NotFoundError(f"rollout '{rollout_id}' does not exist")
    return row


def list_rollouts(
    session: Session, viewer: Principal, *, namespace: str | None, state: str | None, limit: int
) -> list[Rollout]:
    stmt = select(Rollout).order_by(col(Rollout.id).desc())
    if namespace:
        stmt = stmt.where(Rollout.namespace == namespace)
    if state:
        stmt = stmt.where(Rollout.state == state)
    if not viewer.in_namespace(None):  # scoped tokens see their namespaces only
        stmt = stmt.where(col(Rollout.namespace).in_(viewer.namespaces))
    return list(session.exec(stmt.limit(limit)).all())


def selected_devices(session: Session, namespace: str, selector: Selector) -> list[Device]:
    """Live devices of ``namespace`` that ``selector`` matches."""
    stmt = select(Device).where(
        Device.namespace == namespace, col(Device.revoked_at).is_(None), *hardware_filter(selector)
    )
    return [
        d for d in session.exec(stmt.order_by(col(Device.id))).all() if matches(selector, d.tags)
    ]


# --- checks before a rollout exists -------------------------------------------------


def check_waves(waves: list[int]) -> None:
    if (
        not waves
        or any(not 1 <= p <= 100 for p in waves)
        or any(b <= a for a, b in pairwise(waves))
    ):
        raise ValidationFailedError(
            "waves are strictly increasing cumulative percentages in 1..100, e.g. 1,10,50,100",
            {"waves": waves},
        )


def check_spec(spec: RolloutSpec) -> None:
    check_waves(spec.waves)
    if spec.start_at is not None:
        try:
            parse_time(spec.start_at, "start_at")
        except MalformedError as exc:
            raise ValidationFailedError(str(exc)) from exc


def check_policy(version: ModelVersion, selector: Selector, model: str) -> None:
    """Production versions go anywhere; Staging versions only to ``channel=canary`` devices."""
    if version.stage == "Production":
        return
    if version.stage == "Staging" and canary_only(selector):
        return
    hint = (
        "add channel=canary to the selector or promote it to Production"
        if version.stage == "Staging"
        else "promote it to Production first"
    )
    raise ConflictError(
        f"{model}@{version.version} is in stage {version.stage}; a rollout may "
        f"target only a Production version, or a Staging version on "
        f"channel=canary devices — {hint}",
        {"stage": version.stage, "selector": format_selector(selector)},
    )


def check_no_overlap(session: Session, model: RegisteredModel, selector: Selector) -> None:
    """Two active rollouts of one model may not reach the same devices."""
    active = session.exec(
        select(Rollout).where(Rollout.model_id == model.id, col(Rollout.state).in_(list(ACTIVE)))
    ).all()
    clash = [r for r in active if selectors_overlap(r.selector, selector)]
    if clash:
        ids = [public_id(r.id or 0) for r in clash]
        raise ConflictError(
            f"rollout {', '.join(ids)} of this model is still active on "
            f"overlapping devices ({format_selector(clash[0].selector) or 'all'})"
            "; cancel or finish it first, or choose a disjoint selector",
            {"rollouts": ids},
        )


def signature_differences(
    session: Session,
    model: RegisteredModel,
    slot: str,
    version: ModelVersion,
    devices: Sequence[Device],
) -> list[dict[str, Any]]:
    """How the new version's inputs/outputs differ from the versions the devices run."""
    ids, ref = [d.id for d in devices], model_ref(session, model)
    installed: set[int] = set()
    for start in range(0, len(ids), INSERT_BATCH):
        installed.update(
            v
            for v in session.exec(
                select(DeviceSlot.installed_version)
                .distinct()
                .where(
                    col(DeviceSlot.device_id).in_(ids[start : start + INSERT_BATCH]),
                    DeviceSlot.slot == slot,
                    DeviceSlot.model == ref,
                )
            )
            if v is not None
        )
    rows = session.exec(
        select(ModelVersion).where(
            ModelVersion.model_id == model.id, col(ModelVersion.version).in_(sorted(installed))
        )
    ).all()
    diffs = []
    for row in rows:
        for part in ("inputs", "outputs"):
            old, new = row.signature.get(part), version.signature.get(part)
            if old != new:
                diffs.append(
                    {"installed_version": row.version, "part": part, "installed": old, "new": new}
                )
    return diffs


def model_ref(session: Session, model: RegisteredModel) -> str:
    namespace = session.get(Namespace, model.namespace_id)
    assert namespace is not None
    return f"{namespace.name}/{model.name}"


# --- transitions --------------------------------------------------------------------


def transition(
    session: Session,
    rollout: Rollout,
    target: RolloutState,
    *,
    actor: str,
    now: datetime,
    reason: str = "",
    wave: int | None = None,
) -> None:
    """The one place a rollout changes state: check, apply, audit, emit."""
    check_transition(rollout.state, target)
    previous = rollout.state
    stamp = format_time(now)
    rollout.state = target.value
    if wave is not None:
        rollout.wave, rollout.wave_started_at = wave, stamp
    rollout.reason, rollout.updated_at = reason, stamp
    session.add(rollout)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action=f"rollout.{target.value}",
        target=public_id(rollout.id or 0),
        details={"from": previous, "wave": public_wave(rollout.wave), "reason": reason},
    )
    emit_state(session, rollout, actor, previous=previous)


def emit_state(session: Session, rollout: Rollout, actor: str, previous: str | None) -> None:
    """The ``rollout.state_changed`` event (webhooks), in the caller's transaction."""
    emit_event(
        session,
        ROLLOUT_STATE_CHANGED,
        {
            "rollout_id": public_id(rollout.id or 0),
            "namespace": rollout.namespace,
            "model": rollout.model,
            "version": rollout.version,
            "from": previous,
            "state": rollout.state,
            "wave": public_wave(rollout.wave),
            "reason": rollout.reason,
            "actor": actor,
        },
    )


def pause(session: Session, actor: str, rollout: Rollout, now: datetime) -> None:
    transition(session, rollout, RolloutState.PAUSED, actor=actor, now=now, reason="paused")


def resume(session: Session, actor: str, rollout: Rollout, now: datetime) -> None:
    """Start a planned rollout at its first wave, or continue the current wave with a fresh bake.

    Resuming a halted rollout gives its failed devices one more try; without that
    the failures that halted it would halt it again at the next tick.
    """
    if rollout.state == RolloutState.HALTED:
        _retry_failures(session, rollout, now)
    transition(
        session,
        rollout,
        RolloutState.RUNNING,
        actor=actor,
        now=now,
        wave=max(rollout.wave, 0),
        reason="resumed",
    )


def advance(
    session: Session, actor: str, rollout: Rollout, now: datetime, reason: str = "advanced by hand"
) -> None:
    """Open the next wave (or complete after the last one) without waiting for the gate."""
    if rollout.state not in (RolloutState.RUNNING, RolloutState.PAUSED):
        raise IllegalTransitionError(
            f"a {rollout.state} rollout cannot advance",
            {"state": rollout.state, "legal": ["running", "paused"]},
        )
    if rollout.wave + 1 >= len(rollout.waves):
        transition(session, rollout, RolloutState.COMPLETED, actor=actor, now=now, reason=reason)
    else:
        transition(
            session,
            rollout,
            RolloutState.RUNNING,
            actor=actor,
            now=now,
            wave=rollout.wave + 1,
            reason=reason,
        )


def _retry_failures(session: Session, rollout: Rollout, now: datetime) -> None:
    stamp = format_time(now)
    session.exec(
        update(RolloutDevice)
        .where(
            col(RolloutDevice.rollout_id) == rollout.id,
            col(RolloutDevice.wave) <= rollout.wave,
            col(RolloutDevice.state).in_([s.value for s in FAILURES]),
        )
        .values(
            state=DeviceState.PENDING.value,
            attempts=col(RolloutDevice.attempts) + 1,
            updated_at=stamp,
            last_report_at=stamp,
        )
    )
    rollout.retry_generation += 1


def cancel(session: Session, actor: str, rollout: Rollout, now: datetime) -> None:
    transition(session, rollout, RolloutState.CANCELLED, actor=actor, now=now, reason="cancelled")


def rollback(
    session: Session,
    actor: str,
    rollout: Rollout,
    now: datetime,
    reason: str = "rolled back",
    baseline: int | None = None,
) -> None:
    """Every device that took the new version is sent its previous one (signed downgrade).

    A device whose first install this was has no previous version; with ``baseline``
    (a version of the same model) those devices are sent that version instead.
    """
    target = _baseline(session, rollout, baseline) if baseline is not None else None
    if target is not None:
        reason = f"{reason}; devices without a previous version go to v{target.version}"
    transition(session, rollout, RolloutState.ROLLED_BACK, actor=actor, now=now, reason=reason)
    if target is not None:
        session.exec(
            update(RolloutDevice)
            .where(
                col(RolloutDevice.rollout_id) == rollout.id,
                col(RolloutDevice.from_version).is_(None),
                col(RolloutDevice.state).in_([s.value for s in TOOK_VERSION]),
            )
            .values(from_version=target.version, from_manifest=target.manifest_sha256)
        )


def _baseline(session: Session, rollout: Rollout, version: int) -> ModelVersion:
    row = session.exec(
        select(ModelVersion).where(
            ModelVersion.model_id == rollout.model_id, ModelVersion.version == version
        )
    ).first()
    if row is None or version == rollout.version:
        raise ValidationFailedError(
            f"baseline v{version} is not another version of {rollout.model}; name the version "
            "the devices without a previous version should run",
            {"baseline": version},
        )
    return row


def edit_gates(
    session: Session, actor: str, rollout: Rollout, changes: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """Change some gate settings of a rollout that has not ended; audited with before and
    after. The engine reads the new gates at its next tick (the current wave included)."""
    if rollout.state not in ACTIVE:
        raise IllegalTransitionError(
            f"a {rollout.state} rollout's gates cannot change",
            {"state": rollout.state, "legal": sorted(s.value for s in ACTIVE)},
        )
    before = rollout.gates().to_dict()
    try:
        after = GatePolicy.from_dict({**before, **changes}).to_dict()
    except MalformedError as exc:
        raise ValidationFailedError(str(exc), {"gates": changes}) from exc
    changed = {k: {"from": before[k], "to": after[k]} for k in after if after[k] != before[k]}
    for name, value in after.items():
        setattr(rollout, name, value)
    rollout.updated_at = format_time(now)
    session.add(rollout)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="rollout.gates_changed",
        target=public_id(rollout.id or 0),
        details={"changed": changed, "state": rollout.state, "wave": public_wave(rollout.wave)},
    )
    return changed


def on_device_revoked(session: Session, event: DeviceRevoked) -> None:
    """Subscribed to the fleet's `DeviceRevoked`: drop it from the cohorts still waiting for it."""
    session.exec(
        delete(RolloutDevice).where(
            col(RolloutDevice.device_id) == event.device_id,
            col(RolloutDevice.state) == DeviceState.PENDING.value,
        )
    )
    session.flush()
