"""What the models pages show: versions with stages, aliases and lineage, two versions'
metrics side by side, the signed manifest and its key ids, stage history (from the audit
log, where every stage change is recorded), and which devices run each version."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from ferry.protocol.signing import parse_envelope
from ferry.server.audit.tables import AuditEntry
from ferry.server.fleet.tables import Device, DeviceSlot
from ferry.server.registry import service as registry
from ferry.server.registry.tables import ModelVersion, Namespace, RegisteredModel
from ferry.server.trust.tables import SignedManifest

DEVICES_LISTED = 100


def lineage(version: ModelVersion) -> dict[str, Any]:
    """The fields that tie a version to how it was made."""
    meta = version.meta
    data = meta.get("training_data") or {}
    return {
        "created_by": meta.get("created_by"),
        "run_id": meta.get("run_id"),
        "git_commit": meta.get("git_commit"),
        "data_digest": data.get("digest"),
        "data_version": data.get("version"),
        "environment_hash": meta.get("environment_hash"),
    }


def installed_counts(session: Session, model_ref: str) -> dict[int, int]:
    """Live devices per installed version of ``ns/name`` (one GROUP BY)."""
    rows = session.exec(
        select(DeviceSlot.installed_version, func.count())
        .join(Device, col(Device.id) == col(DeviceSlot.device_id))
        .where(
            DeviceSlot.model == model_ref,
            col(Device.revoked_at).is_(None),
            col(DeviceSlot.installed_version).is_not(None),
        )
        .group_by(col(DeviceSlot.installed_version))
    ).all()
    return {int(v): n for v, n in rows if v is not None}


def stage_history(session: Session, model_ref: str, version: int | None = None) -> list[AuditEntry]:
    """Stage changes of the model (or one version), newest first, as the audit log has them."""
    target = f"{model_ref}@{version}" if version is not None else f"{model_ref}@"
    stmt = select(AuditEntry).where(AuditEntry.action == "version.stage")
    stmt = (
        stmt.where(AuditEntry.target == target)
        if version is not None
        else stmt.where(col(AuditEntry.target).startswith(target, autoescape=True))
    )
    return list(session.exec(stmt.order_by(col(AuditEntry.id).desc()).limit(200)).all())


def models_view(
    session: Session, models: list[tuple[Namespace, RegisteredModel]]
) -> list[dict[str, Any]]:
    out = []
    for ns, model in models:
        out.append(
            {
                "namespace": ns.name,
                "name": model.name,
                "tags": model.tags,
                "versions": model.last_version,
                "aliases": registry.model_aliases(session, model),
            }
        )
    return out


def compare(versions: list[ModelVersion], a: int | None, b: int | None) -> dict[str, Any] | None:
    """Metrics of versions ``a`` and ``b`` side by side, with the difference b - a."""
    by_number = {v.version: v for v in versions}
    if a not in by_number or b not in by_number:
        return None
    ma, mb = by_number[a].meta.get("metrics", {}), by_number[b].meta.get("metrics", {})
    rows = []
    for name in sorted(set(ma) | set(mb)):
        va, vb = ma.get(name), mb.get(name)
        delta = (
            round(vb - va, 6)
            if isinstance(va, int | float) and isinstance(vb, int | float)
            else None
        )
        rows.append({"name": name, "a": va, "b": vb, "delta": delta})
    return {
        "a": a,
        "b": b,
        "rows": rows,
        "lineage": [
            (k, lineage(by_number[a])[k], lineage(by_number[b])[k]) for k in lineage(by_number[a])
        ],
    }


def model_view(
    session: Session, ns: Namespace, model: RegisteredModel, a: int | None, b: int | None
) -> dict[str, Any]:
    ref = f"{ns.name}/{model.name}"
    versions = list(registry.list_versions(session, model))
    running = installed_counts(session, ref)
    rows = [
        {
            "version": v.version,
            "stage": v.stage,
            "created_at": v.created_at,
            "aliases": registry.version_aliases(session, v),
            "tags": registry.version_tags(session, v),
            "lineage": lineage(v),
            "metrics": v.meta.get("metrics", {}),
            "devices": running.get(v.version, 0),
        }
        for v in versions
    ]
    if a is None and b is None and len(versions) >= 2:
        a, b = versions[1].version, versions[0].version
    return {
        "ns": ns.name,
        "model": model,
        "ref": ref,
        "versions": rows,
        "aliases": registry.model_aliases(session, model),
        "compare": compare(versions, a, b),
        "history": stage_history(session, ref),
    }


def version_view(
    session: Session, ns: Namespace, model: RegisteredModel, version: ModelVersion
) -> dict[str, Any]:
    ref = f"{ns.name}/{model.name}"
    row = session.get(SignedManifest, version.manifest_sha256)
    envelope = parse_envelope(row.envelope.encode("utf-8")) if row is not None else None
    devices = session.exec(
        select(DeviceSlot.device_id, DeviceSlot.slot)
        .join(Device, col(Device.id) == col(DeviceSlot.device_id))
        .where(
            DeviceSlot.model == ref,
            DeviceSlot.installed_version == version.version,
            col(Device.revoked_at).is_(None),
        )
        .order_by(col(DeviceSlot.device_id))
        .limit(DEVICES_LISTED)
    ).all()
    return {
        "ns": ns.name,
        "model": model,
        "ref": ref,
        "version": version,
        "aliases": registry.version_aliases(session, version),
        "tags": registry.version_tags(session, version),
        "lineage": lineage(version),
        "manifest": json.dumps(envelope.signed, indent=2, sort_keys=True) if envelope else "",
        "key_ids": [s.keyid for s in envelope.signatures] if envelope else [],
        "devices": devices,
        "running": installed_counts(session, ref).get(version.version, 0),
        "history": stage_history(session, ref, version.version),
    }
