"""Prometheus metrics and one structured JSON log line per request.

A pure ASGI middleware (not BaseHTTPMiddleware) so streaming uploads and
downloads pass through untouched. Each app gets its own metrics registry, so
several apps in one process (tests) do not collide. Logged fields are chosen
explicitly — headers are never logged, so tokens cannot leak.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferry.protocol.endpoints import API, DESIRED_STATE

access_log = logging.getLogger("ferry.server.access")
log = logging.getLogger("ferry.server")

# Check-ins are sub-millisecond from the cache and tens of milliseconds when signed.
CHECKIN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# A report waits in an offline device's queue for seconds to days.
LAG_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 86400.0)
TRANSPORTS = ("http", "mqtt")
GATE_DECISIONS = ("start", "wait", "advance", "complete", "halt")
WEBHOOK_OUTCOMES = ("delivered", "failed", "gave_up")
Snapshot = Callable[[], Iterable[GaugeMetricFamily]]
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when first imported


class SnapshotCollector(Collector):
    """Gauges read from the database at scrape time (fleet, rollouts): one function per set.

    A failing source is logged and skipped, so ``/metrics`` still answers with the rest.
    """

    def __init__(self) -> None:
        self.sources: list[Snapshot] = []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for source in self.sources:
            try:
                families = list(source())
            except Exception:
                log.exception("a metrics snapshot failed")
                continue
            yield from families


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ferry_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ferry_http_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "ferry_blob_upload_bytes", "Bytes received in blob uploads", registry=self.registry
        )
        self.download_requests = Counter(
            "ferry_blob_download_requests", "Blob downloads started", registry=self.registry
        )
        self.delta_requests = Counter(
            "ferry_delta_requests",
            "Delta requests by outcome (served, not_ready, not_worth_it, unknown_blob, disabled)",
            ["outcome"],
            registry=self.registry,
        )
        self.delta_served_bytes = Counter(
            "ferry_delta_served_bytes",
            "Bytes of deltas served (whole responses)",
            registry=self.registry,
        )
        self.delta_builds = Counter(
            "ferry_delta_builds",
            "Background delta builds by outcome (offered, not_worth_it, failed, dropped)",
            ["outcome"],
            registry=self.registry,
        )

        self.checkin_latency = Histogram(
            "ferry_checkin_duration_seconds",
            "Device check-ins (GET desired state) by path: "
            "cached (answered ahead of the app) or computed",
            ["path"],
            buckets=CHECKIN_BUCKETS,
            registry=self.registry,
        )
        self.served_bytes = Counter(
            "ferry_served_bytes",
            "Artifact bytes sent to clients by kind (full blob or delta)",
            ["kind"],
            registry=self.registry,
        )
        self.status_reports = Counter(
            "ferry_status_reports",
            "Device status reports received by transport and outcome (accepted, duplicate)",
            ["transport", "outcome"],
            registry=self.registry,
        )
        self.ingest_lag = Histogram(
            "ferry_status_report_lag_seconds",
            "From a report's own timestamp to its ingest, accepted reports only",
            ["transport"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.gate_decisions = Counter(
            "ferry_rollout_gate_decisions",
            "Gate evaluations of rollouts by decision",
            ["decision"],
            registry=self.registry,
        )
        self.mqtt_publish_errors = Counter(
            "ferry_mqtt_publish_errors",
            "MQTT publishes the client could not queue or send",
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "ferry_webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, failed = will retry, gave_up)",
            ["outcome"],
            registry=self.registry,
        )
        # Which worker process holds which lease, and how many requests each served
        # (``ferry server --workers N``: one series per live worker, with a ``pid`` label).
        self.leases = Gauge(
            "ferry_lease_held",
            "1 while this process holds the lease (broker:<login>, background)",
            ["lease"],
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.worker_requests = Gauge(
            "ferry_worker_http_requests",
            "HTTP requests through the middleware, per worker process",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.snapshots = SnapshotCollector()
        self.registry.register(self.snapshots)
        self._zero_fill()

        self.checkin_cache_hits = Counter(
            "ferry_checkin_cache_hits",
            "Device check-ins answered from the check-in cache",
            registry=self.registry,
        )
        # Bound once (cached check-ins are the hottest path); same labels as the routed ones.
        route = DESIRED_STATE.removeprefix(API)
        self.cached_checkin_requests = self.requests.labels("GET", route, "200")
        self.cached_checkin_latency = self.latency.labels("GET", route)
        self.cached_checkin_duration = self.checkin_latency.labels("cached")

    def _zero_fill(self) -> None:
        """Every bounded label value exists from the start, so rates and alerts see zeros."""
        for kind in ("full", "delta"):
            self.served_bytes.labels(kind)
        for transport in TRANSPORTS:
            self.ingest_lag.labels(transport)
            for outcome in ("accepted", "duplicate"):
                self.status_reports.labels(transport, outcome)
        for decision in GATE_DECISIONS:
            self.gate_decisions.labels(decision)
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(outcome)
        self.checkin_latency.labels("computed")

    def record_reports(
        self, transport: str, accepted: int, duplicates: int, lags_s: Iterable[float]
    ) -> None:
        """One ingested batch: counts by outcome and each accepted report's lag."""
        self.status_reports.labels(transport, "accepted").inc(accepted)
        self.status_reports.labels(transport, "duplicate").inc(duplicates)
        lag = self.ingest_lag.labels(transport)
        for seconds in lags_s:
            lag.observe(max(0.0, seconds))

    def lease_changed(self, name: str, held: bool) -> None:
        self.leases.labels(name).set(1 if held else 0)

    def render(self) -> bytes:
        """This registry; with ``PROMETHEUS_MULTIPROC_DIR`` (``ferry server --workers N``)
        every worker's metrics summed instead, and the database gauges once."""
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return generate_latest(self.registry)
        forget_dead_workers(Path(directory))
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        registry.register(self.snapshots)
        return generate_latest(registry)


def forget_dead_workers(directory: Path) -> None:
    """Drop the live-gauge files of worker processes that are gone (killed, restarted)."""
    pids = {path.stem.rsplit("_", 1)[-1] for path in directory.glob("gauge_live*_*.db")}
    for pid in pids:
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(directory))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs. A killed worker stays a zombie until the supervisor
    reaps it (seconds under load), and a zombie holds no lease: it counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists()  # gone since os.kill, or no procfs
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


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
        self.metrics.worker_requests.inc()
        self.metrics.latency.labels(method, route).observe(elapsed)
        access_log.info(
            "request",
            extra={
                "fields": {
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "actor": scope.get("state", {}).get("actor"),
                    "client": (scope.get("client") or ("", 0))[0],
                }
            },
        )


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
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
