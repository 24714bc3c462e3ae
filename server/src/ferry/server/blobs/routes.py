"""Content-addressed blobs: streaming upload, ranged download, and the egress choice.

`serve_blob` decides how authorised bytes leave (blobs and deltas alike), in
this order: a 307 redirect to a presigned URL when the store can make one and
``FERRY_BLOB_REDIRECT`` is on; an empty answer with ``X-Accel-Redirect`` for
nginx to serve the local file when ``FERRY_BLOB_ACCEL_REDIRECT`` names its
internal location; the local file itself (sendfile-sized chunks); else the
store's stream, read in threads.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Mapping
from os import PathLike
from typing import Annotated

import anyio
from fastapi import APIRouter, Path, Request, Response
from prometheus_client import Counter as CounterChild
from starlette.requests import ClientDisconnect
from starlette.responses import FileResponse, RedirectResponse, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from ferry.server.api.deps import CtxDep, DeviceReader, Publisher
from ferry.server.api.http_semantics import IMMUTABLE, check_conditions
from ferry.server.audit import service as audit
from ferry.server.blobs.schemas import BlobStored
from ferry.server.core.blobs import BlobMissingError
from ferry.server.core.context import AppContext
from ferry.server.core.db import session_scope
from ferry.server.core.errors import (
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RangeNotSatisfiableError,
)
from ferry.server.core.memo import Memo
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


def _bounds(header: str, size: int) -> tuple[int, int]:
    """[first, last] of a range `check_range` accepted."""
    match = _SINGLE_RANGE.fullmatch(header.strip())
    assert match is not None
    first, last = match.group(1), match.group(2)
    if not first:
        return max(0, size - int(last)), size - 1
    return int(first), min(int(last), size - 1) if last else size - 1


def serve_blob(
    request: Request,
    ctx: AppContext,
    sha256: str,
    size: int,
    *,
    media_type: str,
    headers: Mapping[str, str],
    sent: CounterChild,
    honour_range: bool,
) -> Response:
    """Send an authorised blob by the cheapest way the store and settings allow."""
    store = ctx.settings.blobs
    if store.redirect:
        url = ctx.blobs.presigned_url(sha256, store.presign_expiry_s)
        if url is not None:
            # The URL expires: caches must not keep the redirect, only the bytes behind it.
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    local = ctx.blobs.local_file(sha256)
    if local is not None and store.accel_redirect:
        # nginx serves the file (and the Range) from its internal location; no body here.
        location = f"{store.accel_redirect}{sha256[:2]}/{sha256[2:]}"
        return Response(
            headers={"X-Accel-Redirect": location, "Content-Type": media_type, **headers}
        )
    if local is not None:
        return BlobResponse(
            local, media_type=media_type, honour_range=honour_range, sent=sent, headers=headers
        )
    return _streamed(request, ctx, sha256, size, media_type, headers, sent, honour_range)


def _streamed(
    request: Request,
    ctx: AppContext,
    sha256: str,
    size: int,
    media_type: str,
    headers: Mapping[str, str],
    sent: CounterChild,
    honour_range: bool,
) -> Response:
    first, last, status = 0, size - 1, 200
    extra = {"Accept-Ranges": "bytes"}
    if honour_range:
        first, last = _bounds(request.headers["range"], size)
        status = 206
        extra["Content-Range"] = f"bytes {first}-{last}/{size}"
    extra["Content-Length"] = str(last - first + 1)

    async def body() -> AsyncIterator[bytes]:
        chunks: Iterator[bytes] = ctx.blobs.read_range(sha256, first, last + 1)
        try:
            while True:
                chunk = await anyio.to_thread.run_sync(next, chunks, None)
                if chunk is None:
                    return
                sent.inc(len(chunk))
                yield chunk
        except BlobMissingError:
            return  # deleted under us: the client sees a short body and retries
        finally:
            await anyio.to_thread.run_sync(getattr(chunks, "close", lambda: None))

    return StreamingResponse(
        body(), status_code=status, media_type=media_type, headers={**headers, **extra}
    )


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
    """A blob's size; remembered (``app.state.blob_sizes``) for the device fast path, which
    answers the next ``HEAD`` of the same bytes before routing."""
    size = _stored_size(ctx, sha256)
    sizes: Memo[str, int] | None = getattr(request.app.state, "blob_sizes", None)
    if sizes is not None:
        sizes.put(sha256, size)
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
    return serve_blob(
        request,
        ctx,
        sha256,
        size,
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
