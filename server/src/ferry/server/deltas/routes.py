"""Model-aware deltas between two stored files, served from the cache, built in the background.

Every non-200 answer means "download the whole file" to the agent, so a miss
answers 404 ``delta_not_ready`` at once and queues the build for the next device
instead of holding the request for the length of a build.

``GET /models/{ns}/{name}/versions/{ref}/deltas`` tells an operator (`ferry inspect`)
what the server offers between a version and its neighbours, per file: ready (with its
size), building, not built yet, or not worth sending. It only reads: it never queues a build.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel
from sqlmodel import Session, col, select

from ferry.protocol.delta import DeltaDescriptor
from ferry.protocol.documents import Role
from ferry.protocol.errors import MalformedError
from ferry.protocol.signing import envelope_bytes, sign_document
from ferry.server.api.deps import CtxDep, DeviceReader, Reader, ReadSessionDep
from ferry.server.api.http_semantics import check_conditions
from ferry.server.blobs.routes import Digest, check_range, serve_blob
from ferry.server.core.context import AppContext
from ferry.server.core.errors import NotFoundError, ValidationFailedError
from ferry.server.deltas import PairRecord
from ferry.server.deltas.jobs import DeltaJobs, Lookup
from ferry.server.registry import service as registry
from ferry.server.registry.tables import ModelVersion

router = APIRouter(tags=["deltas"])
MEDIA_TYPE = "application/vnd.ferry.delta"


class DeltaNotReadyError(NotFoundError):
    """The delta is being built; download the whole file this time."""

    code = "delta_not_ready"


def deltas_of(request: Request) -> DeltaJobs | None:
    """The app's delta jobs; None when ``FERRY_DELTAS_ENABLED`` is off."""
    jobs: DeltaJobs | None = getattr(request.app.state, "deltas", None)
    return jobs


@router.head(
    "/deltas/{from_sha256}/{to_sha256}", response_class=Response, include_in_schema=False
)  # headers only: the file is not read
@router.get(
    "/deltas/{from_sha256}/{to_sha256}",
    response_class=Response,
    responses={
        200: {
            "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            "description": "the delta; X-Ferry-Delta-Sha256 and X-Ferry-Delta-Size name it",
        },
        206: {"description": "the requested byte range"},
    },
)
async def get_delta(
    from_sha256: Digest, to_sha256: Digest, request: Request, ctx: CtxDep, _: DeviceReader
) -> Response:
    """The delta that rebuilds ``to_sha256`` from ``from_sha256``; 404 means "use the full file"."""
    jobs = deltas_of(request)
    if jobs is None:
        ctx.metrics.delta_requests.labels("disabled").inc()
        raise NotFoundError("deltas are disabled on this server")
    found = await anyio.to_thread.run_sync(jobs.lookup, from_sha256, to_sha256)
    ctx.metrics.delta_requests.labels(
        "served" if found.outcome is Lookup.READY else found.outcome.value
    ).inc()
    if found.outcome is Lookup.UNKNOWN_BLOB:
        raise NotFoundError("one of the two blobs is not stored")
    if found.outcome is Lookup.NOT_READY:
        jobs.request(from_sha256, to_sha256)
        raise DeltaNotReadyError("the delta is being built; download the full file")
    if found.offer is None:
        raise NotFoundError(
            "no delta worth sending: download the full file",
            {"max_fraction": jobs.builder.max_fraction},
        )
    record = found.offer.record
    etag = f'"{record.delta_sha256}"'
    if (answer := check_conditions(request, etag)) is not None:
        return answer
    honour = check_range(request.headers.get("range"), record.delta_size)
    if not honour:
        ctx.metrics.delta_served_bytes.inc(record.delta_size)
    return serve_blob(
        request,
        ctx,
        record.delta_sha256,
        record.delta_size,
        media_type=MEDIA_TYPE,
        honour_range=honour,
        sent=ctx.metrics.served_bytes.labels("delta"),
        headers={
            "ETag": etag,
            "X-Ferry-Delta-Sha256": record.delta_sha256,
            "X-Ferry-Delta-Size": str(record.delta_size),
        },
    )


Sha256Param = Annotated[str, Query(pattern=r"^[0-9a-f]{64}$")]
FilePath = Annotated[str, Query(min_length=1, max_length=255)]


@router.get(
    "/deltas/{from_sha256}/{to_sha256}/descriptor",
    response_class=Response,
    responses={
        200: {
            "content": {"application/json": {"schema": {"type": "object"}}},
            "description": "the delta's descriptor, signed by a bundles key",
        }
    },
)
async def get_delta_descriptor(
    from_sha256: Digest,
    to_sha256: Digest,
    from_manifest: Sha256Param,
    to_manifest: Sha256Param,
    path: FilePath,
    request: Request,
    ctx: CtxDep,
    _: DeviceReader,
) -> Response:
    """What the delta is (sha256 and size), signed, so a device checks the delta's bytes before
    any decoder runs on them; 404 means "download the whole file", as for the delta itself."""
    jobs = deltas_of(request)
    if jobs is None:
        raise NotFoundError("deltas are disabled on this server")
    found = await anyio.to_thread.run_sync(jobs.lookup, from_sha256, to_sha256)
    if found.outcome is not Lookup.READY or found.offer is None:
        raise NotFoundError("no delta to describe: download the full file")
    try:
        descriptor = found.offer.descriptor(from_manifest, to_manifest, path)
        DeltaDescriptor.from_dict(descriptor.to_dict())  # the path and digests are well-formed
    except MalformedError as exc:
        raise ValidationFailedError(str(exc)) from exc
    body = await anyio.to_thread.run_sync(_signed, ctx, descriptor.to_dict())
    return Response(body, media_type="application/json")


def _signed(ctx: AppContext, document: dict[str, object]) -> bytes:
    with Session(ctx.read_engine) as session:
        key = ctx.keys.key(session, Role.BUNDLES)
        session.rollback()
    return envelope_bytes(sign_document(document, [key]))


# --- what is offered around one version ------------------------------------------------


class OfferState(StrEnum):
    """A pair as this replica sees it; anything but ``ready`` means the whole file."""

    READY = "ready"  # built and smaller than max_fraction of the file: devices get the delta
    BUILDING = "building"  # queued or building on this replica
    NOT_BUILT = "not_built"  # nobody asked yet: a rollout start, a plan or a device will
    NOT_WORTH_IT = "not_worth_it"  # built, but not smaller than max_fraction of the file
    MISSING_BLOB = "missing_blob"  # a file of either version is not in the blob store


class DeltaOfferPublic(BaseModel):
    """One file's delta between two versions (same path, different bytes)."""

    from_version: int
    to_version: int
    path: str
    from_sha256: str
    to_sha256: str
    size: int  # of the file devices end up with
    state: OfferState
    delta_size: int | None = None  # when ready
    delta_sha256: str | None = None


class VersionDeltasPublic(BaseModel):
    namespace: str
    model: str
    version: int
    enabled: bool  # FERRY_DELTAS_ENABLED: when off, devices always download whole files
    max_fraction: float | None  # a delta is offered when smaller than this part of the file
    versions_total: int  # other versions of the model
    versions_shown: int  # the nearest ``versions`` of them, by number
    deltas: list[DeltaOfferPublic]  # to this version first, then from it


NeighbourCount = Annotated[int, Query(ge=1, le=100)]


@router.get("/models/{ns}/{name}/versions/{ref}/deltas")
def list_version_deltas(
    ns: str,
    name: str,
    ref: str,
    request: Request,
    session: ReadSessionDep,
    _: Reader,
    versions: NeighbourCount = 10,
) -> VersionDeltasPublic:
    """Deltas between this version and its nearest other versions, both ways, per file."""
    model = registry.get_model(session, ns, name)[1]
    this = registry.resolve_version(session, model, ref)
    others = sorted(
        session.exec(
            select(ModelVersion).where(
                ModelVersion.model_id == model.id, col(ModelVersion.version) != this.version
            )
        ).all(),
        key=lambda v: (abs(v.version - this.version), v.version),
    )
    nearest = sorted(others[:versions], key=lambda v: v.version)
    jobs = deltas_of(request)
    offers = [] if jobs is None else _offers(jobs, this, nearest)
    return VersionDeltasPublic(
        namespace=ns,
        model=name,
        version=this.version,
        enabled=jobs is not None,
        max_fraction=None if jobs is None else jobs.builder.max_fraction,
        versions_total=len(others),
        versions_shown=len(nearest),
        deltas=offers,
    )


def _offers(
    jobs: DeltaJobs, this: ModelVersion, others: list[ModelVersion]
) -> list[DeltaOfferPublic]:
    """To ``this`` from each other version, then from ``this`` to each: one cache lookup
    per distinct pair of files (a stat and a small read)."""
    seen: dict[tuple[str, str], tuple[OfferState, PairRecord | None]] = {}
    answer = []
    for other in others:
        for old, new in ((other, this), (this, other)):
            before = {f["path"]: f["sha256"] for f in old.files}
            for entry in new.files:
                base, target = before.get(entry["path"]), str(entry["sha256"])
                if base is None or base == target:
                    continue
                if (base, target) not in seen:
                    seen[base, target] = _state(jobs, base, target)
                state, record = seen[base, target]
                answer.append(
                    DeltaOfferPublic(
                        from_version=old.version,
                        to_version=new.version,
                        path=entry["path"],
                        from_sha256=base,
                        to_sha256=target,
                        size=entry["size"],
                        state=state,
                        delta_size=record.delta_size if record else None,
                        delta_sha256=record.delta_sha256 if record else None,
                    )
                )
    return sorted(answer, key=lambda o: (o.to_version != this.version, o.from_version, o.path))


def _state(jobs: DeltaJobs, base: str, target: str) -> tuple[OfferState, PairRecord | None]:
    found = jobs.lookup(base, target)
    if found.offer is not None:
        return OfferState.READY, found.offer.record
    if found.outcome is Lookup.NOT_READY:
        building = jobs.building(base, target)
        return (OfferState.BUILDING if building else OfferState.NOT_BUILT), None
    if found.outcome is Lookup.UNKNOWN_BLOB:
        return OfferState.MISSING_BLOB, None
    return OfferState.NOT_WORTH_IT, None
