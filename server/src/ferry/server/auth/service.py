"""API tokens and roles.

A token is ``fry_`` + 32 random bytes (url-safe base64); only its sha256 is
stored, so a database leak does not leak credentials. Roles are a fixed set; a
token is scoped to namespaces (``["*"]`` = all). Admin implies every role.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

from sqlmodel import Session, select

from ferry.server.auth.tables import ApiToken
from ferry.server.core.columns import utc_now
from ferry.server.core.errors import ForbiddenError

TOKEN_PREFIX = "fry_"
ALL_NAMESPACES = "*"


class ServerRole(StrEnum):
    ADMIN = "admin"
    PUBLISHER = "publisher"
    APPROVER = "approver"
    OPERATOR = "operator"
    VIEWER = "viewer"
    DEVICE = "device"  # issued at enrolment by the fleet part, never through POST /tokens


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name, role and namespace scope."""

    token_id: int
    name: str
    role: ServerRole
    namespaces: tuple[str, ...]

    def in_namespace(self, namespace: str | None) -> bool:
        if self.role is ServerRole.ADMIN or ALL_NAMESPACES in self.namespaces:
            return True
        return namespace is not None and namespace in self.namespaces

    def has_role(self, *roles: ServerRole) -> bool:
        return self.role is ServerRole.ADMIN or self.role in roles

    def require(self, roles: tuple[ServerRole, ...], namespace: str | None = None) -> None:
        """Raise 403 unless this principal holds one of ``roles`` in ``namespace``."""
        if not self.has_role(*roles):
            wanted = ", ".join(r.value for r in roles)
            raise ForbiddenError(f"this needs the role {wanted}; the token '{self.name}' "
                                 f"has '{self.role.value}'")
        if namespace is not None and not self.in_namespace(namespace):
            raise ForbiddenError(f"the token '{self.name}' is not scoped to namespace "
                                 f"'{namespace}'")


def create_token(session: Session, *, name: str, role: ServerRole, namespaces: list[str],
                 expires_at: str | None = None) -> tuple[ApiToken, str]:
    """Create a token row; return it with the secret, which is never stored."""
    secret = new_token_secret()
    row = ApiToken(name=name, role=role.value, namespaces=list(namespaces) or [ALL_NAMESPACES],
                   token_hash=hash_token(secret), expires_at=expires_at)
    session.add(row)
    session.flush()
    return row, secret


def lookup(session: Session, secret: str) -> ApiToken | None:
    """The live token for ``secret``, or None when unknown, revoked or expired."""
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(secret))).first()
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= utc_now():
        return None
    return row


def principal_of(row: ApiToken) -> Principal:
    assert row.id is not None
    return Principal(row.id, row.name, ServerRole(row.role), tuple(row.namespaces))


def has_any_token(session: Session) -> bool:
    return session.exec(select(ApiToken.id).limit(1)).first() is not None
