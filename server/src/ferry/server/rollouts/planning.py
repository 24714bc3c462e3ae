"""Planning and creating rollouts: `POST /rollouts/plan` and `POST /rollouts`.

`make_plan` is also the first half of `create_rollout`, so a plan and the rollout
made from the same request agree: the same devices, the same waves (the wave
seed is derived from the request, see `ferry.protocol.waves.rollout_seed`), the
same refusals. A plan lists its refusals instead of raising them; creating
raises the first one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, col, select

from ferry.protocol.timefmt import format_time
from ferry.protocol.waves import rollout_seed, wave_index
from ferry.server.audit import service as audit
from ferry.server.core.errors import ConflictError
from ferry.server.fleet.hooks import DeltaSizes
from ferry.server.fleet.selectors import format_selector
from ferry.server.fleet.tables import Device, DeviceSlot
from ferry.server.registry.tables import ModelVersion, RegisteredModel
from ferry.server.rollouts.machine import RolloutState, public_id, public_wave
from ferry.server.rollouts.service import (
    INSERT_BATCH,
    MAX_LISTED,
    RolloutSpec,
    check_no_overlap,
    check_policy,
    check_spec,
    emit_state,
    resolve_model,
    resolve_version,
    selected_devices,
    signature_differences,
    transition,
)
from ferry.server.rollouts.tables import Rollout, RolloutDevice


@dataclass
class Plan:
    """The devices a rollout would target, and why it would be refused (if it would)."""

    spec: RolloutSpec
    model: RegisteredModel
    version: ModelVersion
    ref: str  # "ns/name"
    matching: list[Device]
    targeted: list[Device]
    incompatible: list[Device]
    problems: list[ConflictError] = field(default_factory=list)

    @property
    def seed(self) -> str:
        return rollout_seed(
            self.ref,
            self.version.manifest_sha256,
            self.spec.slot,
            format_selector(self.spec.selector),
            self.spec.waves,
        )


def make_plan(session: Session, spec: RolloutSpec, *, check_signature: bool = False) -> Plan:
    """Resolve the request and select its devices; bad input raises, refusals are collected."""
    check_spec(spec)
    model = resolve_model(session, spec.namespace, spec.model)
    version = resolve_version(session, model, spec.version)
    ref = f"{spec.namespace}/{spec.model}"
    matching = selected_devices(session, spec.namespace, spec.selector)
    fits = [not version.hardware or d.hardware in version.hardware for d in matching]
    incompatible = [d for d, ok in zip(matching, fits, strict=True) if not ok]
    targeted = (
        [d for d, ok in zip(matching, fits, strict=True) if ok]
        if spec.skip_incompatible
        else matching
    )
    plan = Plan(spec, model, version, ref, matching, targeted, incompatible)
    checks: list[Callable[[], None]] = [
        lambda: check_policy(version, spec.selector, ref),
        lambda: check_no_overlap(session, model, spec.selector),
        lambda: check_hardware(plan),
        lambda: check_not_empty(session, plan),
    ]
    if check_signature:
        checks.append(lambda: check_signature_unchanged(session, plan))
    for check in checks:
        try:
            check()
        except ConflictError as exc:
            plan.problems.append(exc)
    return plan


def check_hardware(plan: Plan) -> None:
    """Refuse a version some targeted device cannot run, unless those are skipped."""
    if plan.spec.skip_incompatible or not plan.incompatible:
        return
    bad, version = plan.incompatible, plan.version
    raise ConflictError(
        f"{plan.ref}@{version.version} supports hardware {', '.join(version.hardware)}, but "
        f"{len(bad)} targeted device(s) are not compatible ({_listed(bad)}); narrow the "
        f"selector (e.g. hw in ({','.join(version.hardware)})) or skip them with "
        "--skip-incompatible (skip_incompatible)",
        {
            "incompatible_devices": [incompatible_public(d, version) for d in bad[:MAX_LISTED]],
            "count": len(bad),
        },
    )


def check_not_empty(session: Session, plan: Plan) -> None:
    """A rollout on nobody would complete at once and then claim every device enrolled
    later: only on purpose (``allow_empty``)."""
    if plan.targeted or plan.spec.allow_empty:
        return
    selector = format_selector(plan.spec.selector) or "(all devices)"
    enrolled = len(selected_devices(session, plan.spec.namespace, {}))
    why = (
        f"all {len(plan.matching)} matching device(s) are incompatible and skipped"
        if plan.matching
        else f"selector {selector} matches none of the {enrolled} live device(s) of namespace "
        f"{plan.spec.namespace}"
    )
    raise ConflictError(
        f"the rollout would target no device: {why}; check the tags with `ferry devices list "
        f"-n {plan.spec.namespace}`, or pass --allow-empty (allow_empty) for a rollout that "
        "completes at once and then updates matching devices as they enrol",
        {
            "selector": format_selector(plan.spec.selector),
            "matching": len(plan.matching),
            "enrolled": enrolled,
        },
    )


def check_signature_unchanged(session: Session, plan: Plan) -> None:
    diffs = signature_differences(session, plan.model, plan.spec.slot, plan.version, plan.targeted)
    if diffs:
        raise ConflictError(
            f"{plan.ref}@{plan.version.version} changes the input/output "
            "signature of what the targeted devices run; use an explicit "
            "rollout after updating the applications",
            {"signature_differences": diffs},
        )


def _listed(devices: Sequence[Device], most: int = 5) -> str:
    names = ", ".join(f"{d.id} ({d.hardware})" for d in devices[:most])
    return names + (f" and {len(devices) - most} more" if len(devices) > most else "")


def incompatible_public(device: Device, version: ModelVersion) -> dict[str, Any]:
    return {
        "device_id": device.id,
        "hardware": device.hardware,
        "reason": f"hardware {device.hardware} is not in the version's list "
        f"({', '.join(version.hardware)})",
    }


# --- creation ----------------------------------------------------------------------------


def create_rollout(
    session: Session, actor: str, spec: RolloutSpec, now: datetime, *, check_signature: bool = False
) -> Rollout:
    """Plan, refuse with the first problem if there is one, then persist rollout and members."""
    plan = make_plan(session, spec, check_signature=check_signature)
    if plan.problems:
        raise plan.problems[0]
    stamp, version, model = format_time(now), plan.version, plan.model
    assert model.id is not None
    rollout = Rollout(
        namespace=spec.namespace,
        model=plan.ref,
        model_id=model.id,
        slot=spec.slot,
        version=version.version,
        manifest_sha256=version.manifest_sha256,
        hardware=list(version.hardware),
        selector=spec.selector,
        waves=spec.waves,
        **spec.gates.to_dict(),
        auto_rollback=spec.auto_rollback,
        start_at=spec.start_at,
        created_by=actor,
        created_at=stamp,
        updated_at=stamp,
    )
    session.add(rollout)
    session.flush()
    _add_members(session, rollout, plan.targeted, stamp)
    audit.append(
        session,
        actor=actor,
        action="rollout.create",
        target=public_id(rollout.id or 0),
        details={
            "model": plan.ref,
            "version": version.version,
            "slot": spec.slot,
            "selector": format_selector(spec.selector),
            "waves": spec.waves,
            "devices": len(plan.targeted),
            "skipped": [d.id for d in plan.incompatible][:MAX_LISTED]
            if spec.skip_incompatible
            else [],
            "allow_empty": spec.allow_empty,
        },
    )
    emit_state(session, rollout, actor, previous=None)
    if spec.start_paused:
        transition(
            session,
            rollout,
            RolloutState.PAUSED,
            actor=actor,
            now=now,
            reason="planned; waiting for an operator",
        )
    elif spec.start_at is None or spec.start_at <= stamp:
        transition(session, rollout, RolloutState.RUNNING, actor=actor, now=now, wave=0)
    return rollout


def _add_members(session: Session, rollout: Rollout, devices: Sequence[Device], stamp: str) -> None:
    """One row per targeted device, inserted in batches: the aggregates GROUP BY these."""
    manifests = dict(
        session.exec(
            select(ModelVersion.version, ModelVersion.manifest_sha256).where(
                ModelVersion.model_id == rollout.model_id
            )
        ).all()
    )
    current = dict(
        session.exec(
            select(DeviceSlot.device_id, DeviceSlot.installed_version).where(
                DeviceSlot.slot == rollout.slot, DeviceSlot.model == rollout.model
            )
        ).all()
    )
    seed = rollout.wave_seed()
    rows = [member_row(rollout, seed, d.id, current.get(d.id), manifests, stamp) for d in devices]
    for start in range(0, len(rows), INSERT_BATCH):
        session.execute(insert(RolloutDevice), rows[start : start + INSERT_BATCH])


def member_row(
    rollout: Rollout,
    seed: str,
    device_id: str,
    from_version: int | None,
    manifests: dict[int, str],
    stamp: str,
) -> dict[str, Any]:
    return {
        "rollout_id": rollout.id,
        "device_id": device_id,
        "wave": wave_index(seed, device_id, rollout.waves),
        "state": "pending",
        "attempts": 0,
        "from_version": from_version,
        "from_manifest": manifests.get(from_version) if from_version else None,
        "updated_at": stamp,
        "last_report_at": "",
    }


# --- the plan as the API shows it ----------------------------------------------------------


@dataclass(frozen=True)
class Download:
    """What one device would fetch: ``none`` (it runs the version), ``delta`` or ``full``."""

    kind: str
    bytes: int


def plan_public(session: Session, plan: Plan, sizes: DeltaSizes) -> dict[str, Any]:
    """Matching, per-wave members, skipped or refused devices, downloads and total bytes."""
    installed = installed_versions(session, plan)
    downloads = download_table(session, plan, set(installed.values()), sizes)
    seed, waves = plan.seed, plan.spec.waves
    members: list[list[dict[str, Any]]] = [[] for _ in range(len(waves) + 1)]
    for device in plan.targeted:
        current = installed.get(device.id)
        download = downloads[current]
        members[wave_index(seed, device.id, waves)].append(
            {
                "device_id": device.id,
                "hardware": device.hardware,
                "installed_version": current,
                "download": download.kind,
                "bytes": download.bytes,
            }
        )
    kinds = Counter(m["download"] for wave in members for m in wave)
    total = sum(m["bytes"] for wave in members for m in wave)
    incompatible = [incompatible_public(d, plan.version) for d in plan.incompatible]
    return {
        "namespace": plan.spec.namespace,
        "model": plan.ref,
        "version": plan.version.version,
        "slot": plan.spec.slot,
        "selector": format_selector(plan.spec.selector),
        "waves": waves,
        "wave_seed": seed,
        "hardware": list(plan.version.hardware),
        "matching": len(plan.matching),
        "targeted": len(plan.targeted),
        "wave_members": [
            {"wave": public_wave(k), "percent": p, "count": len(members[k]), "devices": members[k]}
            for k, p in enumerate(waves)
        ],
        "beyond_last_wave": len(members[-1]),
        "skipped": incompatible if plan.spec.skip_incompatible else [],
        "incompatible": [] if plan.spec.skip_incompatible else incompatible,
        "downloads": {kind: kinds.get(kind, 0) for kind in ("full", "delta", "none")},
        "total_bytes": total,
        "refusals": [
            {"code": p.code, "message": p.message, "details": p.details} for p in plan.problems
        ],
    }


def installed_versions(session: Session, plan: Plan) -> dict[str, int | None]:
    """Device id → the version of this model it runs in the slot (None: nothing yet)."""
    rows = session.exec(
        select(DeviceSlot.device_id, DeviceSlot.installed_version).where(
            DeviceSlot.slot == plan.spec.slot, DeviceSlot.model == plan.ref
        )
    ).all()
    targeted = {d.id for d in plan.targeted}
    return {device_id: version for device_id, version in rows if device_id in targeted}


def download_table(
    session: Session, plan: Plan, installed: set[int | None], sizes: DeltaSizes
) -> dict[int | None, Download]:
    """Per installed version, what its devices download: a file whose old copy (same path)
    has a ready delta costs the delta, any other file its full size (the agent fetches
    every file of the new bundle). One lookup per version and file, not per device."""
    target = plan.version
    old = {
        row.version: {f["path"]: f["sha256"] for f in row.files}
        for row in session.exec(
            select(ModelVersion).where(
                ModelVersion.model_id == plan.model.id,
                col(ModelVersion.version).in_([v for v in installed if v is not None]),
            )
        ).all()
    }
    table: dict[int | None, Download] = {target.version: Download("none", 0)}
    for version in installed | {None}:
        if version == target.version:
            continue
        files = old.get(version, {}) if version is not None else {}
        total, deltas = 0, 0
        for entry in target.files:
            base = files.get(entry["path"])
            size = (
                sizes.delta_size(base, entry["sha256"])
                if base is not None and base != entry["sha256"]
                else None
            )
            total += int(entry["size"]) if size is None else size
            deltas += size is not None
        table[version] = Download("delta" if deltas else "full", total)
    return table
