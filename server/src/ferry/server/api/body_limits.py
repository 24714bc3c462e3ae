"""Size caps on device-facing request bodies, enforced before the body is read.

Anyone holding a device credential (or none: enrolment) can post to these paths,
and FastAPI reads and parses a JSON body whole before any route code runs: a
50 MiB status report cost its full read and parse. This ASGI middleware answers
413 ``payload_too_large`` (the one error shape) when the declared
``Content-Length`` is over the cap, without pulling a byte, and otherwise reads a
body of unknown length (chunked) only up to the cap, then replays it to the app.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferry.protocol.endpoints import ENROLL, STATUS
from ferry.server.core.errors import PayloadTooLargeError, error_response

KiB = 1024
# A status report's `detail` is at most 4096 characters: a batch of 100 worst-case reports
# (the agent's default batch) is ~2.5 MiB, a typical one ~50 KiB.
DEVICE_BODY_LIMITS: Mapping[str, int] = {
    STATUS: 4 * 1024 * KiB,
    ENROLL: 16 * KiB,
}


def _declared_length(scope: Scope) -> int | None:
    """The Content-Length header, or None when absent or unreadable (the stream cap applies)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int) -> JSONResponse:
    return error_response(
        PayloadTooLargeError(
            f"request body larger than {limit} bytes",
            {"limit_bytes": limit},
            headers={"Connection": "close"},
        )
    )


class BodyLimitMiddleware:
    """Refuse over-long bodies on the capped paths before the app reads them."""

    def __init__(self, app: ASGIApp, limits: Mapping[str, int] = DEVICE_BODY_LIMITS) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope["path"]) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _too_large(limit)(scope, receive, send)
            return
        body = await read_capped(receive, limit)
        if body is None:
            await _too_large(limit)(scope, receive, send)
            return
        await self.app(scope, replay(body, receive), send)


async def read_capped(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it grows past ``limit`` (or the client left)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the buffered body over once, then defers to the client's."""
    delivered = False

    async def again() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again
