"""Content-addressed blob storage in a local folder (the embedded default).

`BlobStore` is the interface the API codes against; `S3BlobStore`
(`ferry.server.blobs.s3`) is the other implementation. `LocalBlobStore` keeps
``ab/cdef…`` files under its root: an upload streams into a temp file in the
final directory while hashing, is fsynced and then renamed into place with
``os.replace`` — so a blob is either complete and verified or absent, and memory
use does not depend on the blob size. Records (small documents such as delta
pairs) live under ``records/``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import anyio

from ferry.server.core.blobs import (
    READ_CHUNK_BYTES,
    WRITE_BATCH_BYTES,
    BlobMissingError,
    BlobStore,
    PutResult,
    check_digest,
    check_record_name,
)
from ferry.server.core.errors import DigestMismatchError, PayloadTooLargeError
from ferry.server.core.settings import BlobSettings

__all__ = ["BlobStore", "LocalBlobStore", "PutResult", "check_digest", "open_store"]
RECORDS = "records"


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

    def describe(self) -> str:
        return f"local folder {self.root}"

    def local_file(self, sha256: str) -> Path | None:
        path = self.path(sha256)
        return path if path.is_file() else None

    def read_range(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self.path(sha256)
        try:
            handle = path.open("rb")
        except FileNotFoundError as exc:
            raise BlobMissingError(sha256) from exc
        with handle:
            handle.seek(start)
            left = None if end is None else max(0, end - start)
            while left is None or left > 0:
                chunk = handle.read(
                    READ_CHUNK_BYTES if left is None else min(left, READ_CHUNK_BYTES)
                )
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def put_file(self, sha256: str, path: Path) -> PutResult:
        final = self.path(sha256)
        size = Path(path).stat().st_size
        if final.exists():
            return PutResult(sha256=sha256, size=size, created=False)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            shutil.move(path, tmp)  # a rename on the same file system, else a copy
            with tmp.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        finally:
            tmp.unlink(missing_ok=True)
        return PutResult(sha256=sha256, size=size, created=True)

    def _record_path(self, name: str) -> Path:
        return self.root / RECORDS / check_record_name(name)

    def get_record(self, name: str) -> bytes | None:
        try:
            return self._record_path(name).read_bytes()
        except FileNotFoundError:
            return None

    def put_record(self, name: str, data: bytes) -> None:
        path = self._record_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".record-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp_name, path)
        finally:
            Path(tmp_name).unlink(missing_ok=True)

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


def open_store(settings: BlobSettings, blob_dir: Path) -> BlobStore:
    """The store ``FERRY_BLOB_BACKEND`` names (no network call: /readyz checks reachability)."""
    if settings.backend == "s3":
        from ferry.server.blobs.s3 import S3BlobStore

        return S3BlobStore(settings)
    return LocalBlobStore(blob_dir)
