"""API tokens: only the sha256 of the secret is stored."""

from __future__ import annotations

from sqlmodel import Field, SQLModel

from ferry.server.core.columns import json_field, utc_now


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    role: str
    namespaces: list[str] = json_field(list)
    token_hash: str = Field(unique=True)
    created_at: str = Field(default_factory=utc_now)
    expires_at: str | None = None
    revoked_at: str | None = None
