"""API tokens (admin) and ``/whoami``."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlmodel import col, select

from ferry.protocol.errors import MalformedError
from ferry.protocol.timefmt import parse_time
from ferry.server.api.deps import Admin, CurrentPrincipal, ReadSessionDep, RowId, SessionDep
from ferry.server.audit import service as audit
from ferry.server.auth.schemas import TokenCreate, TokenCreated, TokenPublic, WhoAmI
from ferry.server.auth.service import ServerRole, create_token, revoke_token
from ferry.server.auth.tables import ApiToken
from ferry.server.core.errors import NotFoundError, ValidationFailedError

router = APIRouter(tags=["tokens"])


def _public(row: ApiToken) -> TokenPublic:
    return TokenPublic.model_validate(row, from_attributes=True)


@router.post("/tokens", status_code=201)
def create(body: TokenCreate, session: SessionDep, admin: Admin) -> TokenCreated:
    if body.expires_at is not None:
        try:
            parse_time(body.expires_at, "expires_at")
        except MalformedError as exc:
            raise ValidationFailedError(str(exc)) from exc
    row, secret = create_token(
        session,
        name=body.name,
        role=ServerRole(body.role.value),
        namespaces=body.namespaces,
        expires_at=body.expires_at,
    )
    audit.append(
        session,
        actor=admin.name,
        action="token.create",
        target=f"token:{row.id}",
        details={"name": row.name, "role": row.role, "namespaces": row.namespaces},
    )
    session.commit()
    return TokenCreated(**_public(row).model_dump(), token=secret)


@router.get("/tokens")
def list_tokens(session: ReadSessionDep, _: Admin) -> list[TokenPublic]:
    rows = session.exec(select(ApiToken).order_by(col(ApiToken.id))).all()
    return [_public(row) for row in rows]


@router.delete("/tokens/{token_id}", status_code=204, response_class=Response)
def revoke(token_id: RowId, session: SessionDep, admin: Admin) -> Response:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFoundError(f"token {token_id} does not exist")
    if revoke_token(session, row):
        audit.append(
            session,
            actor=admin.name,
            action="token.revoke",
            target=f"token:{row.id}",
            details={"name": row.name},
        )
        session.commit()
    return Response(status_code=204)


@router.get("/whoami")
def whoami(principal: CurrentPrincipal) -> WhoAmI:
    return WhoAmI(name=principal.name, role=principal.role, namespaces=list(principal.namespaces))
