"""Compute a cached login's new desired state before FastAPI.

During a rollout every device fetches a document the check-in cache cannot answer
(the rollout's creation, or its wave opening, voided it), and the route computes
and signs it. Through the app each such fetch also paid the middleware stack,
routing and dependency resolution (three worker-thread hops): as much server CPU
as the computation's own transaction (docs/benchmarks.md, issue 17). For a
credential whose device login is cached (the guard of the other fast paths),
`answer_computed_checkin` runs the route's own `serve_desired_state` in one
worker thread. Anything else — no cached login, a device the computation refuses
(revoked on another replica before this one polled, unknown), an unexpected
error — goes on to the app, so refusals keep the route's rules and the one error
shape; a ``GET`` has no body to replay. A computation that committed its new
document and then failed is safe to hand over: the route finds the stored
document still right and serves it, with the same sequence. Answers are counted
under the route's label; the access-log line is written at DEBUG, as for the
other fast paths.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from starlette.types import Scope, Send

from ferry.protocol.endpoints import API, DESIRED_STATE
from ferry.server.checkin.fast_path import answer_ok, bearer_secret, cached_login
from ferry.server.checkin.routes import serve_desired_state
from ferry.server.fleet.credentials import device_id_of

log = logging.getLogger("ferry.server")
_ROUTE = DESIRED_STATE.removeprefix(API)


async def answer_computed_checkin(state: Any, scope: Scope, send: Send) -> bool:
    """Compute, sign and send a cached login's desired state and return True, or return
    False to let the app handle the request."""
    if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != DESIRED_STATE:
        return False
    started = time.perf_counter()
    login, secret = cached_login(state, scope), bearer_secret(scope)
    if login is None or secret is None:
        return False
    try:
        body = await anyio.to_thread.run_sync(_serve, state, device_id_of(login), secret)
    except Exception:  # rolled back or already stored: the route answers or refuses it
        log.debug("the check-in fast path handed a request to the route", exc_info=True)
        return False
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await answer_ok(state, scope, send, (_ROUTE, login.name, started), headers, body)
    return True


def _serve(state: Any, device_id: str, secret: str) -> bytes:
    return serve_desired_state(state.ctx, state.fleet, state.checkin_cache, device_id, secret)
