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

from sqlmodel import Session, col, select

from ferry.server.auth.tables import ApiToken
from ferry.server.core.columns import utc_now
from ferry.server.core.errors import ConflictError, ForbiddenError

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
            raise ForbiddenError(
                f"this needs the role {wanted}; the token '{self.name}' has '{self.role.value}'"
            )
        if namespace is not None and not self.in_namespace(namespace):
            raise ForbiddenError(
                f"the token '{self.name}' is not scoped to namespace '{namespace}'"
            )


def create_token(
    session: Session,
    *,
    name: str,
    role: ServerRole,
    namespaces: list[str],
    expires_at: str | None = None,
) -> tuple[ApiToken, str]:
    """Create a token row; return it with the secret, which is never stored."""
    secret = new_token_secret()
    row = ApiToken(
        name=name,
        role=role.value,
        namespaces=list(namespaces) or [ALL_NAMESPACES],
        token_hash=hash_token(secret),
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, secret


def lookup(session: Session, secret: str) -> ApiToken | None:
    """The live token for ``secret``, or None when unknown, revoked or expired."""
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(secret))).first()
    return row if row is not None and _is_live(row, utc_now()) else None


def _is_live(row: ApiToken, now: str) -> bool:
    return row.revoked_at is None and (row.expires_at is None or row.expires_at > now)


def revoke_token(session: Session, row: ApiToken) -> bool:
    """Revoke ``row``; True when this call revoked it.

    The last live admin token is refused (409): revoking it locks every operator out,
    leaving only ``ferry admin create-token`` on the host. Live admin rows are locked
    first (``FOR UPDATE``), so two concurrent revocations cannot both pass the check.
    """
    now = utc_now()
    if row.revoked_at is not None:
        return False
    if row.role == ServerRole.ADMIN.value and _is_live(row, now):
        admins = session.exec(
            select(ApiToken)
            .where(ApiToken.role == ServerRole.ADMIN.value, col(ApiToken.revoked_at).is_(None))
            .with_for_update()
        ).all()
        if not any(_is_live(other, now) and other.id != row.id for other in admins):
            raise ConflictError(
                f"token {row.id} ('{row.name}') is the last admin token; "
                "create another admin token before revoking it",
                {"token_id": row.id},
            )
    row.revoked_at = now
    session.add(row)
    return True


def principal_of(row: ApiToken) -> Principal:
    assert row.id is not None
    return Principal(row.id, row.name, ServerRole(row.role), tuple(row.namespaces))


def has_any_token(session: Session) -> bool:
    return session.exec(select(ApiToken.id).limit(1)).first() is not None
