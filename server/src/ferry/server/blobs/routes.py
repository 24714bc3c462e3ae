"""Content-addressed blobs: streaming upload, ranged download."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from os import PathLike
from typing import Annotated

import anyio
from fastapi import APIRouter, Path, Request, Response
from prometheus_client import Counter as CounterChild
from starlette.requests import ClientDisconnect
from starlette.responses import FileResponse
from starlette.types import Message, Receive, Scope, Send

from ferry.server.api.deps import CtxDep, DeviceReader, Publisher
from ferry.server.api.http_semantics import IMMUTABLE, check_conditions
from ferry.server.audit import service as audit
from ferry.server.blobs.schemas import BlobStored
from ferry.server.core.context import AppContext
from ferry.server.core.db import session_scope
from ferry.server.core.errors import (
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RangeNotSatisfiableError,
)
from ferry.server.core.schemas import SHA256_PATTERN

router = APIRouter(tags=["blobs"])

Digest = Annotated[str, Path(pattern=SHA256_PATTERN, description="hex sha256 of the bytes")]
_SINGLE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
DOWNLOAD_CHUNK = 4 * 1024 * 1024


class BlobResponse(FileResponse):
    """FileResponse with large chunks, serving the whole file when Range is ignored.

    We honour one byte range; a multi-range or malformed header is ignored
    (RFC 9110 §14.2 allows that), so the client gets the full body with 200.
    """

    chunk_size = DOWNLOAD_CHUNK

    def __init__(
        self,
        path: PathLike[str],
        *,
        honour_range: bool,
        media_type: str,
        headers: Mapping[str, str],
        sent: CounterChild | None = None,
    ) -> None:
        super().__init__(path, media_type=media_type, headers=headers)
        self.honour_range = honour_range
        self.sent = sent  # counts the body bytes actually sent (ranges, aborted downloads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.honour_range:
            scope = dict(scope, headers=[(k, v) for k, v in scope["headers"] if k != b"range"])
        counter = self.sent
        if counter is None:
            await super().__call__(scope, receive, send)
            return

        async def counting(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body":
                counter.inc(len(message.get("body", b"")))

        await super().__call__(scope, receive, counting)


def check_range(header: str | None, size: int) -> bool:
    """True when a single satisfiable range should be served; 416 when unsatisfiable."""
    if header is None:
        return False
    match = _SINGLE_RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return False
    first, last = match.group(1), match.group(2)
    if first and last and int(last) < int(first):
        return False
    unsatisfiable = (int(first) >= size) if first else (int(last) == 0 or size == 0)
    if unsatisfiable:
        raise RangeNotSatisfiableError(
            f"range {header} is outside the blob of {size} bytes",
            {"size": size},
            headers={"Content-Range": f"bytes */{size}"},
        )
    return True


def _stored_size(ctx: CtxDep, sha256: str) -> int:
    size = ctx.blobs.size(sha256)
    if size is None:
        raise NotFoundError(f"blob {sha256} is not stored")
    return size


@router.head(
    "/blobs/{sha256}",
    response_class=Response,
    responses={200: {"description": "stored; Content-Length is its size"}},
)
def head_blob(sha256: Digest, request: Request, ctx: CtxDep, _: DeviceReader) -> Response:
    size = _stored_size(ctx, sha256)
    etag = f'"{sha256}"'
    if (answer := check_conditions(request, etag, IMMUTABLE)) is not None:
        return answer
    return Response(
        headers={"Content-Length": str(size), "ETag": etag, "Accept-Ranges": "bytes", **IMMUTABLE}
    )


@router.get(
    "/blobs/{sha256}",
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        },
        206: {"description": "the requested byte range"},
    },
)
def get_blob(sha256: Digest, request: Request, ctx: CtxDep, _: DeviceReader) -> Response:
    size = _stored_size(ctx, sha256)
    etag = f'"{sha256}"'
    if (answer := check_conditions(request, etag, IMMUTABLE)) is not None:
        return answer
    honour = check_range(request.headers.get("range"), size)
    ctx.metrics.download_requests.inc()
    return BlobResponse(
        ctx.blobs.path(sha256),
        media_type="application/octet-stream",
        honour_range=honour,
        sent=ctx.metrics.served_bytes.labels("full"),
        headers={"ETag": etag, **IMMUTABLE},
    )


@router.put(
    "/blobs/{sha256}",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
    responses={200: {"model": BlobStored, "description": "already stored"}},
)
async def put_blob(
    sha256: Digest, request: Request, ctx: CtxDep, publisher: Publisher, response: Response
) -> BlobStored:
    limit = ctx.settings.max_blob_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"upload of {declared} bytes exceeds the limit of {limit}", {"max_bytes": limit}
        )
    try:
        result = await ctx.blobs.put_stream(sha256, _counted(request, ctx), limit)
    except ClientDisconnect as exc:
        raise BadRequestError("upload interrupted; nothing was stored") from exc
    if result.created:
        await anyio.to_thread.run_sync(
            _audit_upload, ctx, publisher.name, result.sha256, result.size
        )
    else:
        response.status_code = 200
    return BlobStored(sha256=result.sha256, size=result.size, created=result.created)


def _audit_upload(ctx: AppContext, actor: str, sha256: str, size: int) -> None:
    with session_scope(ctx.engine) as session:
        audit.append(session, actor=actor, action="blob.put", target=sha256, details={"size": size})


async def _counted(request: Request, ctx: AppContext) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        ctx.metrics.upload_bytes.inc(len(chunk))
        yield chunk
