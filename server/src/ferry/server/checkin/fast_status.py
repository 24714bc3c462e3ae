"""Take a device's HTTP status batch before FastAPI when its login is cached.

Every device posts its ``committed`` report over HTTP (and any report its MQTT
session could not carry), so a rollout of N devices makes at least N posts.
Through the app each one pays the middleware stack, routing, dependency
resolution (three worker-thread hops) and a response model. For a credential
whose device login is cached (`ferry.server.checkin.cache`, the same guard as
the other fast paths) `answer_status_post` reads the body, validates it with
the route's own model and runs the route's own `accept_status` in one worker
thread. Anything else — no cached login, a body without a declared length or
over the cap, a body the model or the ingest refuses (unknown, revoked, another
device's reports), an unexpected error — goes on to the app with the body
replayed, so every refusal keeps the one error shape and the route's rules.
Answers are counted in the request metrics under the route's label; the access
log line is written at DEBUG, as for the other fast paths.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send

from ferry.protocol.endpoints import API, STATUS
from ferry.server.api.body_limits import DEVICE_BODY_LIMITS, read_capped, replay
from ferry.server.checkin.fast_path import answer_ok, cached_login
from ferry.server.checkin.routes import accept_status
from ferry.server.core.db import session_scope
from ferry.server.fleet.credentials import device_id_of
from ferry.server.fleet.schemas import StatusAccepted, StatusBatch

log = logging.getLogger("ferry.server")
_ROUTE = STATUS.removeprefix(API)
_LIMIT = DEVICE_BODY_LIMITS[STATUS]
_JSON = b"application/json"


async def answer_status_post(
    state: Any, scope: Scope, receive: Receive, send: Send
) -> Receive | None:
    """None when the batch was answered here (or the client left); else the receive to hand
    the app (the client's, or one replaying the body read here)."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != STATUS:
        return receive
    started = time.perf_counter()
    login = cached_login(state, scope)
    if login is None or not _plain_json(scope):
        return receive
    body = await read_capped(receive, _LIMIT)
    if body is None:
        return None  # the client left (a declared length within the cap cannot overflow it)
    try:
        batch = StatusBatch.model_validate_json(body)
        accepted = await anyio.to_thread.run_sync(_accept, state, device_id_of(login), batch)
    except Exception:  # rolled back: the route refuses or fails it in the one error shape
        log.debug("the status fast path handed a batch to the route", exc_info=True)
        return replay(body, receive)
    answer = accepted.model_dump_json().encode()
    headers = [(b"content-type", _JSON), (b"content-length", str(len(answer)).encode())]
    await answer_ok(state, scope, send, (_ROUTE, login.name, started), headers, answer)
    return None


def _plain_json(scope: Scope) -> bool:
    """A JSON body with a declared length within the route's cap (else: the app decides)."""
    headers = dict(scope["headers"])
    length = headers.get(b"content-length", b"")
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return content_type == _JSON and length.isdigit() and int(length) <= _LIMIT


def _accept(state: Any, device_id: str, batch: StatusBatch) -> StatusAccepted:
    with session_scope(state.ctx.engine) as session:
        return accept_status(session, device_id, batch, state.fleet, state.ctx.metrics)
