"""The blob-store interface: where artifact and delta bytes live, addressed by their sha256.

Concepts code against `BlobStore`, which hands out bytes as streams, ranges and
(where the store can) presigned URLs, never as local paths; `ferry.server.blobs`
holds the implementations (a local folder, an S3 bucket), chosen by the
composition root (`ferry.server.app`) from `BlobSettings`. The only local-path
hook, `local_file`, is for the egress layer (nginx ``X-Accel-Redirect``, sendfile)
and for `local_copy`, which hands a seekable file to code that needs one.

Every method but `put_stream` blocks (disk or network): call them from a thread.
"""

from __future__ import annotations

import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ferry.server.core.errors import BadRequestError

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
RECORD_RE = re.compile(r"^[a-z0-9_-]+(/[a-z0-9_.-]+)*$")
# Hash and write in batches: one thread hop per MiB keeps the event loop free
# without paying a hop per small network chunk.
WRITE_BATCH_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024


def check_digest(sha256: str) -> str:
    """Return the digest if it is 64 lowercase hex characters, else a 400."""
    if not SHA256_RE.fullmatch(sha256):
        raise BadRequestError(f"'{sha256}' is not a sha256 digest (64 lowercase hex characters)")
    return sha256


def check_record_name(name: str) -> str:
    """Record names are small slash-separated lowercase words (never ``..``)."""
    if not RECORD_RE.fullmatch(name) or ".." in name:
        raise ValueError(f"{name!r} is not a record name")
    return name


@dataclass(frozen=True)
class PutResult:
    sha256: str
    size: int
    created: bool


class BlobMissingError(LookupError):
    """The blob vanished between the size check and the read (not a client error)."""


class BlobStore(ABC):
    """Where artifact and delta bytes live, addressed by their sha256.

    Guarantees of every implementation: a blob is visible at its address only
    once all of its bytes are stored and hash to that address (a failed, wrong or
    interrupted upload leaves nothing there); storing the same bytes twice is
    idempotent (``created`` is False the second time); memory stays flat whatever
    the blob size.
    """

    @abstractmethod
    def size(self, sha256: str) -> int | None:
        """Size in bytes, or None when the blob is not stored."""

    @abstractmethod
    def read_range(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``[start, end)`` (``end`` None: to the end) as chunks.

        A generator: nothing is read before the first ``next``; close it when
        abandoning it early. `BlobMissingError` when the blob is not stored.
        """

    @abstractmethod
    async def put_stream(
        self, sha256: str, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> PutResult:
        """Store the streamed bytes if they hash to ``sha256``; nothing is kept otherwise."""

    @abstractmethod
    def put_file(self, sha256: str, path: Path) -> PutResult:
        """Store a local file the caller has already hashed to ``sha256`` (it may be moved)."""

    @abstractmethod
    def get_record(self, name: str) -> bytes | None:
        """A small named document stored beside the blobs (e.g. a delta pair), or None."""

    @abstractmethod
    def put_record(self, name: str, data: bytes) -> None:
        """Write a small named document; readers see the old or the new one, never a mix."""

    def presigned_url(self, sha256: str, expires_s: int) -> str | None:
        """A URL the store itself serves the blob at for ``expires_s``; None if it cannot."""
        return None

    def local_file(self, sha256: str) -> Path | None:
        """The blob's local file, for the egress layer only; None when not local or absent."""
        return None

    def exists(self, sha256: str) -> bool:
        return self.size(sha256) is not None

    def unavailable(self) -> str | None:
        """Why the store cannot take or serve blobs right now, or None when it can (/readyz)."""
        return None

    def describe(self) -> str:
        """One line naming the store, for the start-up log."""
        return type(self).__name__

    @contextmanager
    def local_copy(self, sha256: str, work_dir: Path) -> Iterator[Path]:
        """A seekable local file with the blob's bytes, for as long as the block runs.

        The local store hands out its own file (read it, never write it); other
        stores stream the blob into a temp file under ``work_dir``, removed after.
        """
        local = self.local_file(sha256)
        if local is not None:
            yield local
            return
        work_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{sha256[:12]}-", dir=work_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                chunks = self.read_range(sha256)
                try:
                    for chunk in chunks:
                        out.write(chunk)
                finally:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()
            yield Path(name)
        finally:
            Path(name).unlink(missing_ok=True)

    def close(self) -> None:
        """Release connections (the app's shutdown)."""
