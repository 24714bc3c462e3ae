"""Answer steady-state device check-ins from the check-in cache, before FastAPI.

``GET /api/v1/device/desired-state`` with a device credential whose cached
envelope is current (see `ferry.server.checkin.cache`) is answered by
`answer_cached_checkin`, which `FerryApp` calls ahead of its middleware stack:
no routing, no dependency resolution, no worker thread, no database. Every
other request, and every check-in the cache cannot answer, goes on to the app,
whose route computes the document and fills the cache.

Cached answers are counted in the same request metrics as routed ones (route
label ``/device/desired-state``) and in ``ferry_checkin_cache_hits``;
their access-log line is written at DEBUG, since a fleet polling every minute
would otherwise fill the INFO log with identical lines.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import Scope, Send

from ferry.protocol.endpoints import API, DESIRED_STATE, DEVICE_TOKEN_PREFIX
from ferry.protocol.topics import NOTICE_EPOCH_HEADER
from ferry.server.checkin.cache import CheckinCache, credential_key
from ferry.server.core.observability import Metrics, access_log
from ferry.server.fleet.runtime import FleetRuntime

_BEARER = b"bearer "
_ROUTE = DESIRED_STATE.removeprefix(API)  # the label routed requests get


async def answer_cached_checkin(state: Any, scope: Scope, send: Send) -> bool:
    """Answer from the cache and return True, or return False to let the app handle it."""
    if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != DESIRED_STATE:
        return False
    started = time.perf_counter()
    found = _cached(state, scope)
    if found is None:
        return False
    device_id, body = found
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
    _record(state.ctx.metrics, device_id, time.perf_counter() - started)
    return True


def _cached(state: Any, scope: Scope) -> tuple[str, bytes] | None:
    secret = bearer_secret(scope)
    runtime: FleetRuntime | None = getattr(state, "fleet", None)
    if (
        secret is None
        or not secret.startswith(DEVICE_TOKEN_PREFIX)
        or runtime is None
        or runtime.settings.checkin_cache_poll_s <= 0
    ):
        return None
    cache: CheckinCache = state.checkin_cache
    now = runtime.now()
    entry = cache.lookup(
        credential_key(secret), now, runtime.settings.desired_state_ttl_s, notice_epoch_of(scope)
    )
    if entry is None:
        return None
    runtime.last_seen.touch(entry.device_id, now)
    return entry.device_id, entry.body


_EPOCH_HEADER = NOTICE_EPOCH_HEADER.lower().encode("latin-1")


def notice_epoch_of(scope: Scope) -> int | None:
    """The fleet epoch a device's notice named (``X-Ferry-Epoch``), if any and well-formed."""
    for name, value in scope["headers"]:
        if name == _EPOCH_HEADER:
            return int(value) if value.isdigit() and len(value) <= 18 else None
    return None


def bearer_secret(scope: Scope) -> str | None:
    """The secret of an ``Authorization: Bearer`` header, or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            if value[: len(_BEARER)].lower() != _BEARER:
                return None
            return str(value[len(_BEARER) :].strip().decode("latin-1"))
    return None


def _record(metrics: Metrics, device_id: str, elapsed: float) -> None:
    metrics.cached_checkin_requests.inc()
    metrics.cached_checkin_latency.observe(elapsed)
    metrics.cached_checkin_duration.observe(elapsed)
    metrics.checkin_cache_hits.inc()
    if access_log.isEnabledFor(logging.DEBUG):
        access_log.debug(
            "request",
            extra={
                "fields": {
                    "method": "GET",
                    "path": DESIRED_STATE,
                    "route": _ROUTE,
                    "status": 200,
                    "duration_ms": round(elapsed * 1000, 2),
                    "actor": f"device:{device_id}",
                    "cached": True,
                }
            },
        )
