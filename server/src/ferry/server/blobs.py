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
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import anyio

from ferry.server.errors import BadRequestError, DigestMismatchError, PayloadTooLargeError

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Hash and write in batches: one thread hop per MiB keeps the event loop free
# without paying a hop per small network chunk.
WRITE_BATCH_BYTES = 1024 * 1024


def check_digest(sha256: str) -> str:
    """Return the digest if it is 64 lowercase hex characters, else a 400."""
    if not SHA256_RE.fullmatch(sha256):
        raise BadRequestError(f"'{sha256}' is not a sha256 digest (64 lowercase hex characters)")
    return sha256


@dataclass(frozen=True)
class PutResult:
    sha256: str
    size: int
    created: bool


class BlobStore(ABC):
    """Where artifact bytes live, addressed by their sha256."""

    @abstractmethod
    def size(self, sha256: str) -> int | None:
        """Size in bytes, or None when the blob is not stored."""

    @abstractmethod
    def path(self, sha256: str) -> Path:
        """Local file for serving; only meaningful when `size` is not None."""

    @abstractmethod
    async def put_stream(self, sha256: str, chunks: AsyncIterator[bytes],
                         max_bytes: int) -> PutResult:
        """Store the streamed bytes if they hash to ``sha256``; nothing is kept otherwise."""

    def exists(self, sha256: str) -> bool:
        return self.size(sha256) is not None


class LocalBlobStore(BlobStore):
    """Blobs as files under one directory, two-level fan-out by digest prefix."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        check_digest(sha256)
        return self.root / sha256[:2] / sha256[2:]

    def size(self, sha256: str) -> int | None:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    async def put_stream(self, sha256: str, chunks: AsyncIterator[bytes],
                         max_bytes: int) -> PutResult:
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


async def _copy_hashing(chunks: AsyncIterator[bytes], out: BinaryIO,
                        max_bytes: int) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    batch: list[bytes] = []
    pending = 0
    async for chunk in chunks:
        if not chunk:
            continue
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(f"upload exceeds the limit of {max_bytes} bytes",
                                       {"max_bytes": max_bytes})
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
