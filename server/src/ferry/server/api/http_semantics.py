"""HTTP semantics that caches, proxies and CDNs rely on (RFC 9110).

* `HeadMiddleware`: ``HEAD`` wherever ``GET`` is served. FastAPI registers a
  ``GET`` route for ``GET`` only, so ``HEAD`` answered 405. A path with an explicit
  ``HEAD`` route (blobs, deltas: no file is read) keeps it; any other ``HEAD`` is
  routed as ``GET`` and its body dropped, headers (``Content-Length``, ``ETag``) kept.
* `check_conditions`: ``If-Match`` / ``If-None-Match`` against a resource's strong
  ``ETag`` (content digests: blobs, manifests, deltas), in the order of §13.2.2 —
  ``If-Match`` failing is 412, ``If-None-Match`` matching is 304 for reads.

* `method_not_allowed`: 405 with ``Allow`` naming every method served at the path
  (the router names none, or only the first route's), HEAD included where GET is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferry.server.core.errors import (
    MethodNotAllowedError,
    PreconditionFailedError,
    error_response,
)

RouteTable = list[tuple[re.Pattern[str], frozenset[str]]]

# Content-addressed resources (blobs, manifests by digest): the bytes never change.
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


class HeadMiddleware:
    """Serve ``HEAD`` as ``GET`` without a body where no route serves ``HEAD`` itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or _serves_head(scope):
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(dict(scope, method="GET"), receive, headers_only)


def _serves_head(scope: Scope) -> bool:
    """Some route answers ``HEAD`` at this path itself (or the app has no routes)."""
    app = scope.get("app")
    return app is None or "HEAD" in _methods_at(app, scope["path"], implicit_head=False)


def _flatten(routes: Any) -> Iterator[tuple[str, frozenset[str]]]:
    """(full path, methods) of every route, through included routers (FastAPI nests them)."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            for context in contexts():
                methods = getattr(context.original_route, "methods", None) or set()
                yield context.path, frozenset(methods)
        elif getattr(route, "methods", None):
            yield route.path, frozenset(route.methods)


def _route_table(app: Any) -> RouteTable:
    table: RouteTable | None = getattr(app.state, "route_methods", None)
    if table is None:
        table = [(compile_path(path)[0], methods) for path, methods in _flatten(app.routes)]
        app.state.route_methods = table
    return table


def _methods_at(app: Any, path: str, *, implicit_head: bool = True) -> set[str]:
    """Every method some route serves at ``path``; with HEAD wherever GET is served."""
    methods: set[str] = set()
    for pattern, route_methods in _route_table(app):
        if pattern.match(path):
            methods |= route_methods
    if implicit_head and "GET" in methods:
        methods.add("HEAD")
    return methods


async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """405 in the one error shape, with ``Allow`` listing every method of the path."""
    assert isinstance(exc, HTTPException)
    allowed = ", ".join(sorted(_methods_at(request.app, request.url.path)))
    return error_response(
        MethodNotAllowedError(
            f"{request.method} is not served here; allowed: {allowed}",
            {"allow": allowed},
            headers={"Allow": allowed},
        )
    )


def _tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def _matches(header: str, etag: str, *, weak: bool) -> bool:
    """Does an ``If-Match``/``If-None-Match`` list name ``etag`` (``*`` names any)?"""
    tags = _tags(header)
    if "*" in tags:
        return True
    if weak:
        return etag.removeprefix("W/") in {tag.removeprefix("W/") for tag in tags}
    return etag in tags and not etag.startswith("W/")


def check_conditions(
    request: Request, etag: str, headers: Mapping[str, str] | None = None
) -> Response | None:
    """None when the request should be served; a 304 to send instead; or raise 412.

    ``headers`` go on the 304 as well (``Cache-Control``, …), with the ``ETag``.
    """
    conditions = Headers(scope=request.scope)
    if_match = conditions.get("if-match")
    if if_match is not None and not _matches(if_match, etag, weak=False):
        raise PreconditionFailedError(
            f"If-Match {if_match} does not match the current ETag {etag}", {"etag": etag}
        )
    if_none_match = conditions.get("if-none-match")
    if if_none_match is None or not _matches(if_none_match, etag, weak=True):
        return None
    if request.method not in ("GET", "HEAD"):
        raise PreconditionFailedError(
            f"If-None-Match {if_none_match} matches ETag {etag}", {"etag": etag}
        )
    return Response(status_code=304, headers={**(headers or {}), "ETag": etag})
