"""Liveness, readiness and Prometheus metrics (outside ``/api/v1``, no token).

``/healthz`` says the process answers; ``/readyz`` says this replica can do its
work — the database answers, the blob store is usable, and (when MQTT is on) the
broker connection is up with the status subscription acknowledged — and answers
503 naming what is not, so a load balancer takes the replica out of rotation.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ferry.server.api.deps import CtxDep
from ferry.server.core.context import AppContext
from ferry.server.core.schemas import Health

router = APIRouter(tags=["system"])


@router.get("/healthz")
def healthz() -> Health:
    return Health(status="ok")


def readiness(ctx: AppContext, mqtt: Any) -> dict[str, str]:
    """One word per dependency: ``ok``, ``disabled``, or why it is not ready."""
    checks: dict[str, str] = {}
    try:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except (SQLAlchemyError, OSError) as exc:  # "not ready", never a 500
        checks["database"] = f"unreachable: {type(exc).__name__}"
    checks["blobs"] = ctx.blobs.unavailable() or "ok"
    if mqtt is None:
        checks["mqtt"] = "disabled"
    else:
        checks["mqtt"] = (
            "ok" if mqtt.ready() else "broker not connected or status subscription not acknowledged"
        )
    return checks


@router.get("/readyz", responses={503: {"description": "a dependency is not ready"}})
def readyz(request: Request, ctx: CtxDep) -> JSONResponse:
    checks = readiness(ctx, getattr(request.app.state, "mqtt", None))
    ready = all(v in ("ok", "disabled") for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
def metrics(ctx: CtxDep) -> Response:
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
