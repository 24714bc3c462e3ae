"""Request and response bodies of the token API."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from ferry.server.auth.service import ServerRole
from ferry.server.core.schemas import Strict, Timestamp


class TokenRole(StrEnum):
    """Roles an admin can grant; device credentials come from enrolment instead."""

    ADMIN = "admin"
    PUBLISHER = "publisher"
    APPROVER = "approver"
    OPERATOR = "operator"
    VIEWER = "viewer"


class TokenCreate(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    role: TokenRole
    namespaces: list[
        Annotated[str, StringConstraints(pattern=r"^(\*|[a-z0-9][a-z0-9._-]{0,62})$")]
    ] = Field(default_factory=lambda: ["*"])
    expires_at: Timestamp | None = None


class TokenPublic(BaseModel):
    id: int
    name: str
    role: ServerRole
    namespaces: list[str]
    created_at: str
    expires_at: str | None
    revoked_at: str | None = None


class TokenCreated(TokenPublic):
    token: str


class WhoAmI(BaseModel):
    name: str
    role: ServerRole
    namespaces: list[str]
