"""FastAPI dependencies: the app context, sessions, the calling principal, role checks.

Authentication uses its own short session, so an endpoint that streams a body
(blob upload) does not hold a database transaction — on SQLite that would be the
write lock — for the length of the upload.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Session

from ferry.server.auth.service import Principal, ServerRole, lookup, principal_of
from ferry.server.core.context import AppContext, Authenticator
from ferry.server.core.errors import UnauthenticatedError
from ferry.server.core.numbers import MAX_ROW_ID


async def get_ctx(request: Request) -> AppContext:
    """Async because it does no I/O: FastAPI runs a sync dependency on a worker thread."""
    ctx: AppContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[AppContext, Depends(get_ctx)]
# A row id in a path: bounded, so no integer past 64 bits reaches the database (422).
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]


def _session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
        finally:
            session.rollback()


def get_session(ctx: CtxDep) -> Iterator[Session]:
    """A session for a request that writes; the route commits, anything else rolls back."""
    yield from _session(ctx.engine)


def get_read_session(ctx: CtxDep) -> Iterator[Session]:
    """A session for a read-only request (never takes SQLite's write lock)."""
    yield from _session(ctx.read_engine)


SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]

_bearer = HTTPBearer(auto_error=False, description="API token: `fry_…` (or a device `frd_…`)")


def _api_token(session: Session, secret: str) -> Principal | None:
    row = lookup(session, secret)
    return principal_of(row) if row is not None else None


def get_principal(
    request: Request,
    ctx: CtxDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise UnauthenticatedError(
            "send 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
        )
    secret = creds.credentials
    authenticators: dict[str, Authenticator] = {"fry_": _api_token, **ctx.authenticators}
    check = next((fn for prefix, fn in authenticators.items() if secret.startswith(prefix)), None)
    with Session(ctx.read_engine) as session:
        principal = check(session, secret) if check is not None else None
        session.rollback()
    if principal is None:
        raise UnauthenticatedError(
            "unknown, revoked or expired token", headers={"WWW-Authenticate": "Bearer"}
        )
    request.scope.setdefault("state", {})["actor"] = principal.name
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]

# Role groups used by the routes. Admin passes every check.
READERS = (ServerRole.PUBLISHER, ServerRole.APPROVER, ServerRole.OPERATOR, ServerRole.VIEWER)
DEVICE_READERS = (*READERS, ServerRole.DEVICE)
PUBLISHERS = (ServerRole.PUBLISHER,)
ADMINS = (ServerRole.ADMIN,)


def require(
    *roles: ServerRole, namespace_param: str | None = "ns"
) -> Callable[[Request, Principal], Awaitable[Principal]]:
    """A dependency: the principal must hold one of ``roles`` (in the path's namespace)."""

    async def check(request: Request, principal: CurrentPrincipal) -> Principal:
        namespace = request.path_params.get(namespace_param) if namespace_param else None
        principal.require(roles, namespace)
        return principal

    return check


Admin = Annotated[Principal, Depends(require(*ADMINS))]
Reader = Annotated[Principal, Depends(require(*READERS))]
DeviceReader = Annotated[Principal, Depends(require(*DEVICE_READERS))]
Publisher = Annotated[Principal, Depends(require(*PUBLISHERS))]
