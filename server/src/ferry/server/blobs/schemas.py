"""Response bodies of the blob API."""

from __future__ import annotations

from pydantic import BaseModel


class BlobStored(BaseModel):
    sha256: str
    size: int
    created: bool
