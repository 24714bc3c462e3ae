"""Prometheus metrics and one structured JSON log line per request.

A pure ASGI middleware (not BaseHTTPMiddleware) so streaming uploads and
downloads pass through untouched. Each app gets its own metrics registry, so
several apps in one process (tests) do not collide. Logged fields are chosen
explicitly — headers are never logged, so tokens cannot leak.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferry.protocol.endpoints import API, DESIRED_STATE

access_log = logging.getLogger("ferry.server.access")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("ferry_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("ferry_http_request_duration_seconds",
                                 "HTTP request latency by route", ["method", "route"],
                                 registry=self.registry)
        self.upload_bytes = Counter("ferry_blob_upload_bytes", "Bytes received in blob uploads",
                                    registry=self.registry)
        self.download_requests = Counter("ferry_blob_download_requests",
                                         "Blob downloads started", registry=self.registry)
        self.delta_requests = Counter("ferry_delta_requests", "Delta requests by outcome "
                                      "(served, not_ready, not_worth_it, unknown_blob, disabled)",
                                      ["outcome"], registry=self.registry)
        self.delta_served_bytes = Counter("ferry_delta_served_bytes", "Bytes of deltas served "
                                          "(whole responses)", registry=self.registry)
        self.delta_builds = Counter("ferry_delta_builds", "Background delta builds by outcome "
                                    "(offered, not_worth_it, failed, dropped)", ["outcome"],
                                    registry=self.registry)

        self.checkin_cache_hits = Counter("ferry_checkin_cache_hits", "Device check-ins "
                                          "answered from the check-in cache",
                                          registry=self.registry)
        # Bound once (cached check-ins are the hottest path); same labels as the routed ones.
        route = DESIRED_STATE.removeprefix(API)
        self.cached_checkin_requests = self.requests.labels("GET", route, "200")
        self.cached_checkin_latency = self.latency.labels("GET", route)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._record(scope, status, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "<unmatched>"
        method = scope["method"]
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.latency.labels(method, route).observe(elapsed)
        access_log.info("request", extra={"fields": {
            "method": method, "path": scope["path"], "route": route, "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "actor": scope.get("state", {}).get("actor"),
            "client": (scope.get("client") or ("", 0))[0],
        }})


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }
        data.update(getattr(record, "fields", {}))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """Send ``ferry.*`` logs to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger("ferry")
    if any(getattr(h, "_ferry_json", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._ferry_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
