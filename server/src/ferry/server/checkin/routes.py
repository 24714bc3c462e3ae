"""The device side: signed desired state and status ingest (``frd_`` credentials only)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from sqlmodel import Session

from ferry.protocol.documents import Role, StatusReport
from ferry.protocol.errors import MalformedError
from ferry.protocol.keys import SigningKey
from ferry.protocol.timefmt import parse_time
from ferry.server.api.deps import CtxDep, SessionDep, require
from ferry.server.auth.service import Principal, ServerRole
from ferry.server.checkin.cache import CheckinCache, Entry, credential_key
from ferry.server.checkin.desired import desired_state_envelope, stored_envelope
from ferry.server.checkin.fast_path import bearer_secret
from ferry.server.checkin.ingest import ingest_reports
from ferry.server.core.context import AppContext
from ferry.server.core.db import session_scope
from ferry.server.core.errors import ForbiddenError, ValidationFailedError
from ferry.server.core.observability import Metrics
from ferry.server.fleet.credentials import device_id_of
from ferry.server.fleet.runtime import FleetRuntime, get_runtime
from ferry.server.fleet.schemas import StatusAccepted, StatusBatch

router = APIRouter(tags=["device"])
RuntimeDep = Annotated[FleetRuntime, Depends(get_runtime)]


async def _device(
    principal: Annotated[Principal, Depends(require(ServerRole.DEVICE, namespace_param=None))],
) -> str:
    """The calling device's id; admin tokens pass `require` but are not devices."""
    if principal.role is not ServerRole.DEVICE:
        raise ForbiddenError("this endpoint is for devices (an frd_ credential from enrolment)")
    return device_id_of(principal)


DeviceId = Annotated[str, Depends(_device)]
ENVELOPE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/json": {"schema": {"type": "object"}}},
        "description": "signed desired-state envelope {signed, signatures}",
    }
}


@router.get("/device/desired-state", response_class=Response, responses=ENVELOPE)
def desired_state(
    request: Request, device_id: DeviceId, ctx: CtxDep, runtime: RuntimeDep
) -> Response:
    """The device's signed desired state (`serve_desired_state`)."""
    secret = bearer_secret(request.scope)
    assert secret is not None  # the route's authentication read the same header
    body = serve_desired_state(ctx, runtime, request.app.state.checkin_cache, device_id, secret)
    return Response(body, media_type="application/json")


def serve_desired_state(
    ctx: AppContext, runtime: FleetRuntime, cache: CheckinCache, device_id: str, secret: str
) -> bytes:
    """Compute (or re-sign) the document and remember it for the check-in cache (the route,
    and the fast path for cached logins in `ferry.server.checkin.fast_compute`).

    On SQLite, unchanged documents are read without the write lock (which would
    queue check-ins behind each other); a change is signed under the device's row
    lock. On PostgreSQL a row lock blocks nobody but that device's other requests,
    so one transaction does both: it locks, and writes only when the document
    changed. Sessions are opened here rather than through session dependencies,
    each of which would cost two more worker-thread hops. The director key is read
    once per cache generation.
    """
    started = time.perf_counter()
    generation = cache.generation  # before reading: a change committed meanwhile voids the entry
    now, ttl_s = runtime.now(), runtime.settings.desired_state_ttl_s
    served = None
    if ctx.engine.dialect.name == "sqlite":
        with Session(ctx.read_engine) as reader:
            served = stored_envelope(
                reader, device_id, now, ttl_s, _director(cache, ctx, reader, runtime)
            )
            reader.rollback()
    if served is None:
        with session_scope(ctx.engine) as writer:
            served = desired_state_envelope(
                writer, device_id, now, ttl_s, _director(cache, ctx, writer, runtime)
            )
    runtime.last_seen.touch(device_id, now)
    if runtime.settings.checkin_cache_poll_s > 0:
        cache.store(
            credential_key(secret),
            Entry(
                device_id,
                served.body,
                parse_time(served.expires_at),
                generation,
                served.memberships,
            ),
        )
    ctx.metrics.checkin_latency.labels("computed").observe(time.perf_counter() - started)
    return served.body


def _director(
    cache: CheckinCache, ctx: AppContext, session: Session, runtime: FleetRuntime
) -> Callable[[], SigningKey]:
    """The director key: from the cache while it is on, else read now."""
    if runtime.settings.checkin_cache_poll_s <= 0:
        return lambda: ctx.keys.key(session, Role.DIRECTOR)
    return lambda: cache.director_key(lambda: ctx.keys.key(session, Role.DIRECTOR))


@router.post("/device/status")
def post_status(
    body: StatusBatch, device_id: DeviceId, session: SessionDep, ctx: CtxDep, runtime: RuntimeDep
) -> StatusAccepted:
    return accept_status(session, device_id, body, runtime, ctx.metrics)


def accept_status(
    session: Session, device_id: str, body: StatusBatch, runtime: FleetRuntime, metrics: Metrics
) -> StatusAccepted:
    """Parse, ingest, commit and count one device's batch (the route, and the fast path for
    cached logins in `ferry.server.checkin.fast_status`)."""
    reports = []
    for index, raw in enumerate(body.reports):
        try:
            reports.append(StatusReport.from_dict(raw))
        except MalformedError as exc:
            raise ValidationFailedError(f"reports[{index}]: {exc}", {"index": index}) from exc
    result = ingest_reports(session, device_id, reports, runtime.now(), runtime.last_seen.touch)
    session.commit()
    metrics.record_reports("http", len(result.accepted), len(result.duplicates), result.lags_s)
    return StatusAccepted(accepted=result.accepted, duplicates=result.duplicates)
