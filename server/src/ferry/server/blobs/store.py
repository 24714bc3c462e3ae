"""Content-addressed blob storage.

`BlobStore` is the interface the API codes against (an S3-compatible store can be
added beside the local one). `LocalBlobStore` keeps ``blobs/ab/cdef…`` files: an
upload streams into a temp file in the final directory while hashing, is fsynced
and then renamed into place with ``os.replace`` — so a blob is either complete
and verified or absent, and memory use does not depend on the blob size.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import anyio

from ferry.server.core.blobs import WRITE_BATCH_BYTES, BlobStore, PutResult, check_digest
from ferry.server.core.errors import DigestMismatchError, PayloadTooLargeError

__all__ = ["BlobStore", "LocalBlobStore", "PutResult", "check_digest"]


class LocalBlobStore(BlobStore):
    """Blobs as files under one directory, two-level fan-out by digest prefix."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def unavailable(self) -> str | None:
        if not self.root.is_dir():
            return f"{self.root} is not a directory"
        if not os.access(self.root, os.W_OK | os.X_OK):
            return f"{self.root} is not writable"
        return None

    def path(self, sha256: str) -> Path:
        check_digest(sha256)
        return self.root / sha256[:2] / sha256[2:]

    def size(self, sha256: str) -> int | None:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    async def put_stream(
        self, sha256: str, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> PutResult:
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", dir=final.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size = await _copy_hashing(chunks, out, max_bytes)
                await anyio.to_thread.run_sync(_flush_and_sync, out)
            if digest != sha256:
                raise DigestMismatchError(
                    f"uploaded bytes hash to {digest}, not {sha256}; nothing was stored",
                    {"expected": sha256, "actual": digest, "size": size},
                )
            created = not final.exists()
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            return PutResult(sha256=sha256, size=size, created=created)
        finally:
            tmp.unlink(missing_ok=True)


async def _copy_hashing(
    chunks: AsyncIterator[bytes], out: BinaryIO, max_bytes: int
) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    batch: list[bytes] = []
    pending = 0
    async for chunk in chunks:
        if not chunk:
            continue
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(
                f"upload exceeds the limit of {max_bytes} bytes", {"max_bytes": max_bytes}
            )
        batch.append(chunk)
        pending += len(chunk)
        if pending >= WRITE_BATCH_BYTES:
            await anyio.to_thread.run_sync(_write_batch, hasher, out, batch)
            batch, pending = [], 0
    if batch:
        await anyio.to_thread.run_sync(_write_batch, hasher, out, batch)
    return hasher.hexdigest(), size


def _write_batch(hasher: Any, out: BinaryIO, batch: list[bytes]) -> None:
    for chunk in batch:
        hasher.update(chunk)
        out.write(chunk)


def _flush_and_sync(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
