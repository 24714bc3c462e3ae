"""Answer steady-state device check-ins and manifests from memory, before FastAPI.

``GET /api/v1/device/desired-state`` with a device credential whose cached
envelope is current (see `ferry.server.checkin.cache`) is answered by
`answer_cached_checkin`, which `FerryApp` calls ahead of its middleware stack:
no routing, no dependency resolution, no worker thread, no database. Every
other request, and every check-in the cache cannot answer, goes on to the app,
whose route computes the document and fills the cache.

``GET /api/v1/manifests/{sha256}`` from a device whose login is cached (see
`ferry.server.checkin.cache`) for a manifest this process has served before
(`ferry.server.trust.service.ManifestMemo`) is answered by
`answer_cached_manifest` the same way: every device of a rollout fetches the
same immutable document. Conditional requests (``If-Match``/``If-None-Match``)
go on to the route, which implements them.

``HEAD /api/v1/blobs/{sha256}`` from a device whose login is cached, for a blob
whose size this process has answered before (``app.state.blob_sizes``, filled
by the route), is answered by `answer_cached_blob_head`: content-addressed
bytes never change size. Conditional requests go on to the route.

Cached answers are counted in the same request metrics as routed ones (route
labels ``/device/desired-state``, ``/manifests/{sha256}``, ``/blobs/{sha256}``)
and check-ins in ``ferry_checkin_cache_hits``; their access-log line is written
at DEBUG, since a fleet polling every minute would otherwise fill the INFO log
with identical lines.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import Scope, Send

from ferry.protocol.endpoints import API, BLOB, DESIRED_STATE, DEVICE_TOKEN_PREFIX, MANIFEST
from ferry.protocol.topics import NOTICE_EPOCH_HEADER
from ferry.server.api.http_semantics import IMMUTABLE
from ferry.server.auth.service import Principal
from ferry.server.checkin.cache import CheckinCache, credential_key
from ferry.server.core.memo import Memo
from ferry.server.core.observability import Metrics, access_log
from ferry.server.fleet.runtime import FleetRuntime
from ferry.server.trust.service import ManifestMemo

_BEARER = b"bearer "
_ROUTE = DESIRED_STATE.removeprefix(API)  # the label routed requests get
_MANIFESTS = MANIFEST.removesuffix("{sha256}")
_MANIFEST_ROUTE = MANIFEST.removeprefix(API)
_BLOBS = BLOB.removesuffix("{sha256}")
_BLOB_ROUTE = BLOB.removeprefix(API)
_HEX = frozenset("0123456789abcdef")
_CONDITIONS = (b"if-match", b"if-none-match")
_IMMUTABLE = [(k.lower().encode(), v.encode()) for k, v in IMMUTABLE.items()]


async def answer_from_memory(state: Any, scope: Scope, send: Send) -> bool:
    """`answer_cached_checkin`, `answer_cached_manifest` or `answer_cached_blob_head`: True
    when one answered."""
    if scope["type"] != "http":
        return False
    if scope["method"] == "HEAD":
        return await answer_cached_blob_head(state, scope, send)
    if scope["method"] != "GET":
        return False
    return await answer_cached_checkin(state, scope, send) or await answer_cached_manifest(
        state, scope, send
    )


def _digest_of(scope: Scope, prefix: str) -> str | None:
    """The lowercase hex sha256 ending the path after ``prefix``, or None (the route then
    answers a malformed one in the one error shape)."""
    path: str = scope["path"]
    digest = path[len(prefix) :] if path.startswith(prefix) else ""
    return digest if len(digest) == 64 and _HEX.issuperset(digest) else None


def _unconditional_login(state: Any, scope: Scope) -> Principal | None:
    """The cached device login of a request without ``If-Match``/``If-None-Match`` (the
    routes implement those)."""
    if any(name in _CONDITIONS for name, _ in scope["headers"]):
        return None
    return cached_login(state, scope)


async def answer_cached_manifest(state: Any, scope: Scope, send: Send) -> bool:
    """Answer a device's manifest request from memory and return True, or return False."""
    digest = _digest_of(scope, _MANIFESTS) if scope["method"] == "GET" else None
    memo: ManifestMemo | None = getattr(state, "manifests", None)
    if digest is None or memo is None:
        return False
    started = time.perf_counter()
    found = memo.get(digest)
    login = _unconditional_login(state, scope) if found is not None else None
    if found is None or login is None:
        return False
    body, namespace = found
    if not login.in_namespace(namespace):
        return False  # the route answers 403 in the one error shape
    headers = [(b"content-type", b"application/json"), *_immutable(digest, len(body))]
    await answer_ok(state, scope, send, (_MANIFEST_ROUTE, login.name, started), headers, body)
    return True


async def answer_cached_blob_head(state: Any, scope: Scope, send: Send) -> bool:
    """Answer a device's ``HEAD`` of a blob of known size and return True, or return False."""
    digest = _digest_of(scope, _BLOBS) if scope["method"] == "HEAD" else None
    sizes: Memo[str, int] | None = getattr(state, "blob_sizes", None)
    if digest is None or sizes is None:
        return False
    started = time.perf_counter()
    size = sizes.get(digest)
    login = _unconditional_login(state, scope) if size is not None else None
    if size is None or login is None:
        return False
    headers = [*_immutable(digest, size), (b"accept-ranges", b"bytes")]
    await answer_ok(state, scope, send, (_BLOB_ROUTE, login.name, started), headers, b"")
    return True


def _immutable(digest: str, length: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-length", str(length).encode()),
        (b"etag", f'"{digest}"'.encode()),
        *_IMMUTABLE,
    ]


async def answer_ok(
    state: Any,
    scope: Scope,
    send: Send,
    what: tuple[str, str, float],
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    """Send a 200 and count it like a routed one; ``what``: (route label, actor, start)."""
    route, actor, started = what
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    elapsed = time.perf_counter() - started
    metrics: Metrics = state.ctx.metrics
    method = scope["method"]
    metrics.requests.labels(method, route, "200").inc()
    metrics.latency.labels(method, route).observe(elapsed)
    debug_log(scope["path"], route, actor, elapsed, method)


def _cache_key(state: Any, scope: Scope) -> tuple[str, FleetRuntime, CheckinCache] | None:
    """The cache key of the request's device credential, when the caches are on."""
    secret = bearer_secret(scope)
    runtime: FleetRuntime | None = getattr(state, "fleet", None)
    if (
        secret is None
        or not secret.startswith(DEVICE_TOKEN_PREFIX)
        or runtime is None
        or runtime.settings.checkin_cache_poll_s <= 0
    ):
        return None
    return credential_key(secret), runtime, state.checkin_cache


def cached_login(state: Any, scope: Scope) -> Principal | None:
    """The device principal of the request's credential when the login cache has it."""
    found = _cache_key(state, scope)
    if found is None:
        return None
    key, _, cache = found
    return cache.login(key)


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
    found = _cache_key(state, scope)
    if found is None:
        return None
    key, runtime, cache = found
    now = runtime.now()
    entry = cache.lookup(key, now, runtime.settings.desired_state_ttl_s, notice_epoch_of(scope))
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
    debug_log(DESIRED_STATE, _ROUTE, f"device:{device_id}", elapsed)


def debug_log(path: str, route: str, actor: str, elapsed: float, method: str = "GET") -> None:
    if access_log.isEnabledFor(logging.DEBUG):
        access_log.debug(
            "request",
            extra={
                "fields": {
                    "method": method,
                    "path": path,
                    "route": route,
                    "status": 200,
                    "duration_ms": round(elapsed * 1000, 2),
                    "actor": actor,
                    "cached": True,
                }
            },
        )
