"""Registry operations: namespaces, models, versions, tags, aliases, stages, search.

Functions take an open session and run inside the caller's transaction; each
write appends to the audit log (and emits an event where one is defined) in that
same transaction, so a change, its audit entry and its event commit together.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from ferry.protocol.canonical import canonical_json
from ferry.protocol.documents import BundleManifest, FileEntry, is_safe_relative_path
from ferry.protocol.errors import MalformedError
from ferry.protocol.keys import SigningKey
from ferry.protocol.signing import document_digest, envelope_bytes, sign_document
from ferry.protocol.timefmt import format_time, utcnow
from ferry.server.audit import service as audit
from ferry.server.auth.service import Principal, ServerRole
from ferry.server.core import domain_events
from ferry.server.core.blobs import BlobStore
from ferry.server.core.columns import utc_now
from ferry.server.core.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ValidationFailedError,
)
from ferry.server.core.numbers import ascii_int
from ferry.server.registry.events import AliasMoved
from ferry.server.registry.schemas import Stage, VersionCreate
from ferry.server.registry.tables import (
    ModelAlias,
    ModelVersion,
    Namespace,
    RegisteredModel,
    VersionTag,
)
from ferry.server.trust.tables import SignedManifest
from ferry.server.webhooks.service import STAGE_CHANGED, VERSION_CREATED, emit_event

# --- stages -------------------------------------------------------------------------

# Legal moves and who may make them. Production is reached only through Staging;
# Archived is terminal except for a deliberate return to Staging.
TRANSITIONS: dict[tuple[Stage, Stage], tuple[ServerRole, ...]] = {
    (Stage.NONE, Stage.STAGING): (ServerRole.PUBLISHER, ServerRole.APPROVER),
    (Stage.NONE, Stage.ARCHIVED): (ServerRole.APPROVER,),
    (Stage.STAGING, Stage.PRODUCTION): (ServerRole.APPROVER,),
    (Stage.STAGING, Stage.NONE): (ServerRole.PUBLISHER, ServerRole.APPROVER),
    (Stage.STAGING, Stage.ARCHIVED): (ServerRole.APPROVER,),
    (Stage.PRODUCTION, Stage.STAGING): (ServerRole.APPROVER,),
    (Stage.PRODUCTION, Stage.ARCHIVED): (ServerRole.APPROVER,),
    (Stage.ARCHIVED, Stage.STAGING): (ServerRole.APPROVER,),
}


# --- namespaces ---------------------------------------------------------------------


def get_namespace(session: Session, name: str) -> Namespace:
    row = session.exec(select(Namespace).where(Namespace.name == name)).first()
    if row is None:
        raise NotFoundError(
            f"namespace '{name}' does not exist; an admin creates it with POST /api/v1/namespaces"
        )
    return row


def create_namespace(
    session: Session,
    actor: Principal,
    *,
    name: str,
    description: str,
    require_distinct_approver: bool,
) -> Namespace:
    if session.exec(select(Namespace).where(Namespace.name == name)).first() is not None:
        raise ConflictError(f"namespace '{name}' already exists")
    row = Namespace(
        name=name, description=description, require_distinct_approver=require_distinct_approver
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=actor.name,
        action="namespace.create",
        target=name,
        details={"require_distinct_approver": require_distinct_approver},
    )
    return row


def list_namespaces(session: Session, viewer: Principal) -> Sequence[Namespace]:
    rows = session.exec(select(Namespace).order_by(Namespace.name)).all()
    return [row for row in rows if viewer.in_namespace(row.name)]


# --- models -------------------------------------------------------------------------


def get_model(session: Session, namespace: str, name: str) -> tuple[Namespace, RegisteredModel]:
    ns = get_namespace(session, namespace)
    model = session.exec(
        select(RegisteredModel).where(
            RegisteredModel.namespace_id == ns.id, RegisteredModel.name == name
        )
    ).first()
    if model is None:
        raise NotFoundError(f"model '{namespace}/{name}' does not exist")
    return ns, model


def create_model(
    session: Session,
    actor: Principal,
    *,
    namespace: str,
    name: str,
    description: str,
    tags: list[str],
) -> tuple[RegisteredModel, bool]:
    """Create the model, or return the existing one (False) so pipelines can re-run."""
    ns = get_namespace(session, namespace)
    existing = session.exec(
        select(RegisteredModel).where(
            RegisteredModel.namespace_id == ns.id, RegisteredModel.name == name
        )
    ).first()
    if existing is not None:
        return existing, False
    assert ns.id is not None
    row = RegisteredModel(
        namespace_id=ns.id, name=name, description=description, tags=sorted(set(tags))
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=actor.name,
        action="model.create",
        target=f"{namespace}/{name}",
        details={"tags": row.tags},
    )
    return row, True


def list_models(
    session: Session, viewer: Principal, *, namespace: str | None, q: str | None, tag: str | None
) -> list[tuple[Namespace, RegisteredModel]]:
    stmt = select(Namespace, RegisteredModel).join(
        RegisteredModel, col(RegisteredModel.namespace_id) == col(Namespace.id)
    )
    if namespace:
        stmt = stmt.where(Namespace.name == namespace)
    if q:
        stmt = stmt.where(col(RegisteredModel.name).contains(q, autoescape=True))
    rows = session.exec(stmt.order_by(Namespace.name, RegisteredModel.name)).all()
    return [
        (ns, m) for ns, m in rows if viewer.in_namespace(ns.name) and (tag is None or tag in m.tags)
    ]


def model_aliases(session: Session, model: RegisteredModel) -> dict[str, int]:
    rows = session.exec(
        select(ModelAlias.alias, ModelVersion.version)
        .join(ModelVersion, col(ModelVersion.id) == col(ModelAlias.version_id))
        .where(ModelAlias.model_id == model.id)
    ).all()
    return dict(sorted(rows))


def latest_version_number(session: Session, model: RegisteredModel) -> int | None:
    return session.exec(
        select(ModelVersion.version)
        .where(ModelVersion.model_id == model.id)
        .order_by(col(ModelVersion.version).desc())
        .limit(1)
    ).first()


# --- versions -----------------------------------------------------------------------


def files_digest(files: list[dict[str, Any]]) -> str:
    """Identity of a file set: same paths and digests ⇒ same registration."""
    ordered = sorted(
        ({"path": f["path"], "sha256": f["sha256"]} for f in files), key=lambda f: f["path"]
    )
    return hashlib.sha256(canonical_json(ordered)).hexdigest()


def resolve_version(session: Session, model: RegisteredModel, ref: str) -> ModelVersion:
    """``ref`` is a version number or an alias."""
    if (number := ascii_int(ref)) is not None:
        row = session.exec(
            select(ModelVersion).where(
                ModelVersion.model_id == model.id, ModelVersion.version == number
            )
        ).first()
    else:
        row = session.exec(
            select(ModelVersion)
            .join(ModelAlias, col(ModelAlias.version_id) == col(ModelVersion.id))
            .where(ModelAlias.model_id == model.id, ModelAlias.alias == ref)
        ).first()
    if row is None:
        raise NotFoundError(f"model has no version or alias '{ref}'")
    return row


def find_same_files(session: Session, model: RegisteredModel, digest: str) -> ModelVersion | None:
    return session.exec(
        select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.files_digest == digest
        )
    ).first()


def _check_files(body: VersionCreate, blobs: BlobStore) -> list[dict[str, Any]]:
    files = [f.model_dump() for f in body.files]
    paths = [f["path"] for f in files]
    bad = [p for p in paths if not is_safe_relative_path(p)]
    if bad:
        raise ValidationFailedError(
            "file paths must be relative, without '..' or empty parts", {"paths": bad}
        )
    if len(set(paths)) != len(paths):
        raise ValidationFailedError("two files share a path", {"paths": paths})
    missing = [f["sha256"] for f in files if not blobs.exists(f["sha256"])]
    if missing:
        raise ConflictError(
            "upload every file with PUT /api/v1/blobs/{sha256} before registering the version",
            {"missing": missing},
        )
    wrong = [f["path"] for f in files if blobs.size(f["sha256"]) != f["size"]]
    if wrong:
        raise BadRequestError("declared sizes differ from the stored blobs", {"paths": wrong})
    return files


def _next_version(session: Session, model: RegisteredModel) -> int:
    """Bump the per-model counter row; the row lock keeps numbers unique and monotonic."""
    session.exec(
        update(RegisteredModel)
        .where(col(RegisteredModel.id) == model.id)
        .values(last_version=col(RegisteredModel.last_version) + 1)
    )
    session.refresh(model)
    return model.last_version


def _sign_manifest(session: Session, key: SigningKey, manifest: BundleManifest) -> str:
    signed = manifest.to_dict()
    digest = document_digest(signed)
    if session.get(SignedManifest, digest) is None:
        envelope = envelope_bytes(sign_document(signed, [key])).decode("utf-8")
        session.add(SignedManifest(sha256=digest, envelope=envelope))
    return digest


def register_version(
    session: Session,
    actor: Principal,
    *,
    namespace: str,
    name: str,
    body: VersionCreate,
    blobs: BlobStore,
    bundles_key: Callable[[], SigningKey],
) -> tuple[ModelVersion, bool]:
    """Create version n+1 (True), or return the version with the same files (False).

    With ``body.new_version`` the same files become a new version anyway; its
    ``files_digest`` carries ``+N`` so that accidental duplicates stay refused by the
    (model, files_digest) unique constraint and are still found by `find_same_files`.
    """
    _, model = get_model(session, namespace, name)
    files = _check_files(body, blobs)
    digest = files_digest(files)
    existing = find_same_files(session, model, digest)
    if existing is not None and not body.new_version:
        return existing, False
    try:
        canonical_json(body.signature)
    except MalformedError as exc:
        raise ValidationFailedError(f"signature: {exc} (use strings or integers)") from exc
    number = _next_version(session, model)
    if existing is not None:
        digest = f"{digest}+{number}"
    created_at = format_time(utcnow())
    manifest = BundleManifest(
        namespace=namespace,
        model=name,
        version=number,
        files=tuple(FileEntry(**f) for f in files),
        format=body.format,
        flavor=body.flavor,
        signature=body.signature,
        hardware=tuple(body.hardware),
        created_at=created_at,
    )
    manifest_sha = _sign_manifest(session, bundles_key(), manifest)
    assert model.id is not None
    row = ModelVersion(
        model_id=model.id,
        version=number,
        files=files,
        files_digest=digest,
        format=body.format,
        flavor=body.flavor,
        signature=body.signature,
        hardware=list(body.hardware),
        meta=body.metadata.model_dump(mode="json", exclude_none=True),
        manifest_sha256=manifest_sha,
        created_by_actor=actor.name,
        publisher_token_id=actor.token_id,
        created_at=created_at,
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    for tag in sorted(set(body.tags)):
        session.add(VersionTag(version_id=row.id, tag=tag))
    target = f"{namespace}/{name}@{number}"
    audit.append(
        session,
        actor=actor.name,
        action="version.create",
        target=target,
        details={
            "manifest_sha256": manifest_sha,
            "files": len(files),
            "same_files_as": existing.version if existing else None,
        },
    )
    emit_event(
        session,
        VERSION_CREATED,
        {
            "namespace": namespace,
            "model": name,
            "version": number,
            "manifest_sha256": manifest_sha,
            "actor": actor.name,
        },
    )
    return row, True


def metadata_differences(
    version: ModelVersion, body: VersionCreate, tags: Sequence[str]
) -> list[str]:
    """Fields where a registration request differs from the version it matched by files:
    ``format``, ``flavor``, ``signature``, ``hardware``, ``tags``, ``metadata.<key>``."""
    asked = body.metadata.model_dump(mode="json", exclude_none=True)
    plain = [
        name
        for name, mine, theirs in (
            ("format", version.format, body.format),
            ("flavor", version.flavor, body.flavor),
            ("signature", version.signature, body.signature),
            ("hardware", sorted(version.hardware), sorted(body.hardware)),
            ("tags", sorted(tags), sorted(set(body.tags))),
        )
        if mine != theirs
    ]
    keys = sorted(set(asked) | set(version.meta))
    return plain + [f"metadata.{k}" for k in keys if asked.get(k) != version.meta.get(k)]


def list_versions(session: Session, model: RegisteredModel) -> Sequence[ModelVersion]:
    return session.exec(
        select(ModelVersion)
        .where(ModelVersion.model_id == model.id)
        .order_by(col(ModelVersion.version).desc())
    ).all()


def version_tags(session: Session, version: ModelVersion) -> list[str]:
    return sorted(
        session.exec(select(VersionTag.tag).where(VersionTag.version_id == version.id)).all()
    )


def version_aliases(session: Session, version: ModelVersion) -> list[str]:
    return sorted(
        session.exec(select(ModelAlias.alias).where(ModelAlias.version_id == version.id)).all()
    )


def change_tags(
    session: Session,
    actor: Principal,
    version: ModelVersion,
    target: str,
    *,
    add: list[str],
    remove: list[str],
) -> None:
    assert version.id is not None
    current = set(version_tags(session, version))
    for tag in sorted(set(add) - current):
        session.add(VersionTag(version_id=version.id, tag=tag))
    for tag in sorted(set(remove) & current):
        row = session.get(VersionTag, (version.id, tag))
        session.delete(row)
    session.flush()
    audit.append(
        session,
        actor=actor.name,
        action="version.tags",
        target=target,
        details={"add": sorted(set(add)), "remove": sorted(set(remove))},
    )


def change_stage(
    session: Session,
    actor: Principal,
    ns: Namespace,
    version: ModelVersion,
    target: str,
    *,
    stage: Stage,
    comment: str,
) -> None:
    """Apply one legal transition; see `TRANSITIONS` and docs/server.md."""
    current = Stage(version.stage)
    if current == stage:
        return
    roles = TRANSITIONS.get((current, stage))
    if roles is None:
        raise ConflictError(
            f"illegal stage transition {current.value} → {stage.value}",
            {"legal": _legal_from(current)},
        )
    actor.require(roles, ns.name)
    if stage is Stage.PRODUCTION and ns.require_distinct_approver and _is_publisher(actor, version):
        raise ForbiddenError(
            f"namespace '{ns.name}' requires an approver other than the "
            f"version's publisher ('{version.created_by_actor}')"
        )
    version.stage, version.stage_changed_at = stage.value, utc_now()
    session.add(version)
    session.flush()
    details = {"from": current.value, "to": stage.value, "comment": comment}
    audit.append(session, actor=actor.name, action="version.stage", target=target, details=details)
    emit_event(session, STAGE_CHANGED, {"target": target, "actor": actor.name, **details})


def _is_publisher(actor: Principal, version: ModelVersion) -> bool:
    return actor.token_id == version.publisher_token_id or actor.name == version.created_by_actor


def _legal_from(stage: Stage) -> list[str]:
    return [to.value for (frm, to) in TRANSITIONS if frm == stage]


def set_alias(
    session: Session,
    actor: Principal,
    model: RegisteredModel,
    target: str,
    alias: str,
    version: ModelVersion,
) -> None:
    assert model.id is not None and version.id is not None
    row = session.get(ModelAlias, (model.id, alias))
    if row is None:
        row = ModelAlias(model_id=model.id, alias=alias, version_id=version.id)
    row.version_id = version.id
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=actor.name,
        action="alias.set",
        target=f"{target}:{alias}",
        details={"version": version.version},
    )
    domain_events.publish(session, AliasMoved(actor.name, model, alias, version))


def delete_alias(
    session: Session, actor: Principal, model: RegisteredModel, target: str, alias: str
) -> None:
    row = session.get(ModelAlias, (model.id, alias))
    if row is None:
        raise NotFoundError(f"alias '{alias}' does not exist")
    session.delete(row)
    session.flush()
    audit.append(session, actor=actor.name, action="alias.delete", target=f"{target}:{alias}")


# --- search -------------------------------------------------------------------------

_METRIC_RE = re.compile(r"^([A-Za-z0-9_.\-/]{1,128})(>=|<=|==|>|<)(-?[0-9.]+(?:[eE][-+]?[0-9]+)?)$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
}


@dataclass(frozen=True)
class MetricFilter:
    name: str
    op: str
    value: float

    def accepts(self, metrics: dict[str, Any]) -> bool:
        got = metrics.get(self.name)
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return False
        return _OPS[self.op](float(got), self.value)


def parse_metric_filter(text: str) -> MetricFilter:
    """``accuracy>=0.9`` → MetricFilter; anything else is a 422."""
    match = _METRIC_RE.fullmatch(text.strip())
    if match is None:
        raise ValidationFailedError(
            f"metric filter '{text}' is not <name><op><number> with op one of >=, <=, >, <, =="
        )
    try:
        value = float(match.group(3))
    except ValueError as exc:
        raise ValidationFailedError(f"metric filter '{text}': bad number") from exc
    return MetricFilter(match.group(1), match.group(2), value)


@dataclass(frozen=True)
class SearchQuery:
    namespace: str | None = None
    name: str | None = None
    tag: str | None = None
    stage: Stage | None = None
    alias: str | None = None
    metrics: tuple[MetricFilter, ...] = ()
    limit: int = 100
    offset: int = 0


def search_versions(
    session: Session, viewer: Principal, query: SearchQuery
) -> list[tuple[Namespace, RegisteredModel, ModelVersion]]:
    """SQL narrows by names, stage, tag and alias; metric thresholds are checked in Python."""
    stmt = (
        select(Namespace, RegisteredModel, ModelVersion)
        .join(RegisteredModel, col(RegisteredModel.namespace_id) == col(Namespace.id))
        .join(ModelVersion, col(ModelVersion.model_id) == col(RegisteredModel.id))
    )
    if query.namespace:
        stmt = stmt.where(Namespace.name == query.namespace)
    if query.name:
        stmt = stmt.where(RegisteredModel.name == query.name)
    if query.stage:
        stmt = stmt.where(ModelVersion.stage == query.stage.value)
    if query.tag:
        stmt = stmt.join(VersionTag, col(VersionTag.version_id) == col(ModelVersion.id)).where(
            VersionTag.tag == query.tag
        )
    if query.alias:
        stmt = stmt.join(ModelAlias, col(ModelAlias.version_id) == col(ModelVersion.id)).where(
            ModelAlias.alias == query.alias
        )
    stmt = stmt.order_by(Namespace.name, RegisteredModel.name, col(ModelVersion.version).desc())
    hits = [
        (ns, m, v)
        for ns, m, v in session.exec(stmt)
        if viewer.in_namespace(ns.name)
        and all(f.accepts(v.meta.get("metrics") or {}) for f in query.metrics)
    ]
    return hits[query.offset : query.offset + query.limit]
