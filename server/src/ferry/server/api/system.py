"""Liveness and Prometheus metrics (outside ``/api/v1``, no token)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ferry.server.api.deps import CtxDep
from ferry.server.core.schemas import Health

router = APIRouter(tags=["system"])


@router.get("/healthz")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
def metrics(ctx: CtxDep) -> Response:
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
