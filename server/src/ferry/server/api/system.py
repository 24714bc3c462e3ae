"""Liveness, readiness and Prometheus metrics (outside ``/api/v1``, no token)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from ferry.server.api.deps import CtxDep
from ferry.server.core.schemas import Health

router = APIRouter(tags=["system"])


@router.get("/healthz")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", responses={503: {"model": Health, "description": "not ready"}})
def readyz(request: Request) -> JSONResponse:
    """Ready unless MQTT is on and the server's status subscription is not live.

    While it is not (broker down, session taken over) status reports published
    over MQTT are not ingested: a load balancer or an operator must see that.
    """
    mqtt = getattr(request.app.state, "mqtt", None)
    if mqtt is not None and not mqtt.live:
        return JSONResponse({"status": "mqtt_subscription_not_live"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
def metrics(ctx: CtxDep) -> Response:
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
