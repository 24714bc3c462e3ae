"""Signed documents the server publishes: keyring versions and bundle manifests."""

from __future__ import annotations

from sqlmodel import Field, SQLModel

from ferry.server.core import epoch
from ferry.server.core.columns import utc_now


class KeyringVersion(SQLModel, table=True):
    __tablename__ = "keyring_version"

    version: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    envelope: str
    expires_at: str
    created_at: str = Field(default_factory=utc_now)


class SignedManifest(SQLModel, table=True):
    """Canonical envelope bytes keyed by the digest of the signed part."""

    __tablename__ = "signed_manifest"

    sha256: str = Field(primary_key=True)
    envelope: str
    created_at: str = Field(default_factory=utc_now)


# A new keyring (a rotated or renewed key) re-signs every desired state.
epoch.watch(KeyringVersion, ["version", "envelope", "expires_at"])
