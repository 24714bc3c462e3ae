"""The blob-store interface: where artifact bytes live, addressed by their sha256.

Concepts code against `BlobStore`; `ferry.server.blobs` holds the implementations
(a local folder today) and is chosen by the composition root (`ferry.server.app`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ferry.server.core.errors import BadRequestError

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
    async def put_stream(
        self, sha256: str, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> PutResult:
        """Store the streamed bytes if they hash to ``sha256``; nothing is kept otherwise."""

    def exists(self, sha256: str) -> bool:
        return self.size(sha256) is not None

    def unavailable(self) -> str | None:
        """Why the store cannot take or serve blobs right now, or None when it can (/readyz)."""
        return None
