"""Registered models, their versions, tags, stages, aliases, manifests and search."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from ferry.protocol.documents import Role
from ferry.server.api.deps import (
    CtxDep,
    DeviceReader,
    Publisher,
    Reader,
    ReadSessionDep,
    SessionDep,
    require,
)
from ferry.server.auth.service import Principal, ServerRole
from ferry.server.core.errors import ConflictError, NotFoundError
from ferry.server.core.numbers import MAX_ROW_ID
from ferry.server.core.schemas import NAME_PATTERN
from ferry.server.registry import service as registry
from ferry.server.registry.schemas import (
    AliasPublic,
    AliasSet,
    ModelCreate,
    ModelPublic,
    Stage,
    StageChange,
    TagsChange,
    VersionCreate,
    VersionPublic,
    VersionRegistered,
)
from ferry.server.registry.tables import ModelVersion, Namespace, RegisteredModel
from ferry.server.trust.tables import SignedManifest

router = APIRouter(tags=["models"])

ENVELOPE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/json": {"schema": {"type": "object"}}},
        "description": "signed envelope {signed, signatures}",
    }
}
AliasName = Annotated[str, Path(pattern=NAME_PATTERN)]
# The namespace is in the body: check the role first, the namespace once the body is read.
PublisherOfBody = Annotated[Principal, Depends(require(ServerRole.PUBLISHER, namespace_param=None))]
StageChanger = Annotated[Principal, Depends(require(ServerRole.PUBLISHER, ServerRole.APPROVER))]


def model_public(session: Session, ns: Namespace, model: RegisteredModel) -> ModelPublic:
    return ModelPublic(
        namespace=ns.name,
        name=model.name,
        description=model.description,
        tags=model.tags,
        latest_version=registry.latest_version_number(session, model),
        aliases=registry.model_aliases(session, model),
        created_at=model.created_at,
    )


def version_public(
    session: Session, ns: Namespace, model: RegisteredModel, v: ModelVersion
) -> VersionPublic:
    return VersionPublic(
        namespace=ns.name,
        model=model.name,
        version=v.version,
        stage=Stage(v.stage),
        files=v.files,
        format=v.format,
        flavor=v.flavor,
        signature=v.signature,
        hardware=v.hardware,
        manifest_sha256=v.manifest_sha256,
        metadata=v.meta,
        tags=registry.version_tags(session, v),
        aliases=registry.version_aliases(session, v),
        created_at=v.created_at,
        created_by_actor=v.created_by_actor,
        stage_changed_at=v.stage_changed_at,
    )


@router.post(
    "/models",
    status_code=201,
    responses={200: {"model": ModelPublic, "description": "already exists"}},
)
def create_model(
    body: ModelCreate, session: SessionDep, principal: PublisherOfBody, response: Response
) -> ModelPublic:
    principal.require((ServerRole.PUBLISHER,), body.namespace)
    model, created = registry.create_model(
        session,
        principal,
        namespace=body.namespace,
        name=body.name,
        description=body.description,
        tags=body.tags,
    )
    session.commit()
    if not created:
        response.status_code = 200
    ns = registry.get_namespace(session, body.namespace)
    return model_public(session, ns, model)


@router.get("/models")
def list_models(
    session: ReadSessionDep,
    reader: Reader,
    namespace: str | None = None,
    q: str | None = None,
    tag: str | None = None,
) -> list[ModelPublic]:
    rows = registry.list_models(session, reader, namespace=namespace, q=q, tag=tag)
    return [model_public(session, ns, m) for ns, m in rows]


@router.get("/models/{ns}/{name}")
def get_model(ns: str, name: str, session: ReadSessionDep, _: Reader) -> ModelPublic:
    namespace, model = registry.get_model(session, ns, name)
    return model_public(session, namespace, model)


@router.post(
    "/models/{ns}/{name}/versions",
    status_code=201,
    responses={
        200: {
            "model": VersionRegistered,
            "description": "same files already registered: that version, "
            "existing=true, differences listed",
        }
    },
)
def create_version(
    ns: str,
    name: str,
    body: VersionCreate,
    session: SessionDep,
    ctx: CtxDep,
    publisher: Publisher,
    response: Response,
) -> VersionRegistered:
    try:
        version, created = registry.register_version(
            session,
            publisher,
            namespace=ns,
            name=name,
            body=body,
            blobs=ctx.blobs,
            bundles_key=lambda: ctx.keys.key(session, Role.BUNDLES),
        )
        session.commit()
    except IntegrityError:
        # A concurrent request registered the same files first: answer like a re-register.
        session.rollback()
        _, model = registry.get_model(session, ns, name)
        files = [f.model_dump() for f in body.files]
        same = registry.find_same_files(session, model, registry.files_digest(files))
        if same is None:
            raise ConflictError("concurrent update; retry the request") from None
        version, created = same, False
    namespace, model = registry.get_model(session, ns, name)
    shown = version_public(session, namespace, model, version)
    if created:
        return VersionRegistered(**shown.model_dump())
    response.status_code = 200
    return VersionRegistered(
        **shown.model_dump(),
        existing=True,
        differences=registry.metadata_differences(version, body, shown.tags),
    )


@router.get("/models/{ns}/{name}/versions")
def list_versions(ns: str, name: str, session: ReadSessionDep, _: Reader) -> list[VersionPublic]:
    namespace, model = registry.get_model(session, ns, name)
    return [
        version_public(session, namespace, model, v) for v in registry.list_versions(session, model)
    ]


def _version(
    session: Session, ns: str, name: str, ref: str
) -> tuple[Namespace, RegisteredModel, ModelVersion]:
    namespace, model = registry.get_model(session, ns, name)
    return namespace, model, registry.resolve_version(session, model, ref)


@router.get("/models/{ns}/{name}/versions/{ref}")
def get_version(ns: str, name: str, ref: str, session: ReadSessionDep, _: Reader) -> VersionPublic:
    return version_public(session, *_version(session, ns, name, ref))


@router.get(
    "/models/{ns}/{name}/versions/{ref}/manifest",
    response_class=Response,
    responses=ENVELOPE_RESPONSE,
)
def get_manifest(
    ns: str, name: str, ref: str, session: ReadSessionDep, _: DeviceReader
) -> Response:
    version = _version(session, ns, name, ref)[2]
    row = session.get(SignedManifest, version.manifest_sha256)
    if row is None:
        raise NotFoundError(f"manifest {version.manifest_sha256} is missing")
    return Response(row.envelope.encode("utf-8"), media_type="application/json")


@router.post("/models/{ns}/{name}/versions/{ref}/tags")
def change_tags(
    ns: str, name: str, ref: str, body: TagsChange, session: SessionDep, publisher: Publisher
) -> VersionPublic:
    namespace, model, version = _version(session, ns, name, ref)
    registry.change_tags(
        session,
        publisher,
        version,
        f"{ns}/{name}@{version.version}",
        add=body.add,
        remove=body.remove,
    )
    session.commit()
    return version_public(session, namespace, model, version)


@router.post("/models/{ns}/{name}/versions/{ref}/stage")
def change_stage(
    ns: str, name: str, ref: str, body: StageChange, session: SessionDep, principal: StageChanger
) -> VersionPublic:
    namespace, model, version = _version(session, ns, name, ref)
    registry.change_stage(
        session,
        principal,
        namespace,
        version,
        f"{ns}/{name}@{version.version}",
        stage=body.stage,
        comment=body.comment,
    )
    session.commit()
    return version_public(session, namespace, model, version)


@router.put("/models/{ns}/{name}/aliases/{alias}")
def set_alias(
    ns: str, name: str, alias: AliasName, body: AliasSet, session: SessionDep, publisher: Publisher
) -> AliasPublic:
    if alias.isascii() and alias.isdigit():
        raise ConflictError("an alias cannot be a number (it would shadow a version)")
    _, model, version = _version(session, ns, name, str(body.version))
    registry.set_alias(session, publisher, model, f"{ns}/{name}", alias, version)
    session.commit()
    return AliasPublic(alias=alias, version=version.version)


@router.delete("/models/{ns}/{name}/aliases/{alias}", status_code=204, response_class=Response)
def delete_alias(
    ns: str, name: str, alias: AliasName, session: SessionDep, publisher: Publisher
) -> Response:
    _, model = registry.get_model(session, ns, name)
    registry.delete_alias(session, publisher, model, f"{ns}/{name}", alias)
    session.commit()
    return Response(status_code=204)


@router.get("/versions")
def search(
    session: ReadSessionDep,
    reader: Reader,
    namespace: str | None = None,
    name: str | None = None,
    tag: str | None = None,
    stage: Stage | None = None,
    alias: str | None = None,
    metric: Annotated[list[str] | None, Query(description="e.g. accuracy>=0.9; repeatable")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> list[VersionPublic]:
    query = registry.SearchQuery(
        namespace=namespace,
        name=name,
        tag=tag,
        stage=stage,
        alias=alias,
        metrics=tuple(registry.parse_metric_filter(m) for m in metric or []),
        limit=limit,
        offset=offset,
    )
    return [
        version_public(session, ns, m, v)
        for ns, m, v in registry.search_versions(session, reader, query)
    ]
