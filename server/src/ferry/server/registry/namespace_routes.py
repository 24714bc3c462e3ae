"""Namespaces: created by admins, readable by every token scoped to them."""

from __future__ import annotations

from fastapi import APIRouter

from ferry.server.api.deps import Admin, Reader, ReadSessionDep, SessionDep
from ferry.server.registry import service as registry
from ferry.server.registry.schemas import NamespaceCreate, NamespacePublic
from ferry.server.registry.tables import Namespace

router = APIRouter(tags=["namespaces"])


def _public(row: Namespace) -> NamespacePublic:
    return NamespacePublic.model_validate(row, from_attributes=True)


@router.post("/namespaces", status_code=201)
def create(body: NamespaceCreate, session: SessionDep, admin: Admin) -> NamespacePublic:
    row = registry.create_namespace(
        session,
        admin,
        name=body.name,
        description=body.description,
        require_distinct_approver=body.require_distinct_approver,
    )
    session.commit()
    return _public(row)


@router.get("/namespaces")
def list_all(session: ReadSessionDep, reader: Reader) -> list[NamespacePublic]:
    return [_public(row) for row in registry.list_namespaces(session, reader)]


@router.get("/namespaces/{ns}")
def get(ns: str, session: ReadSessionDep, _: Reader) -> NamespacePublic:
    return _public(registry.get_namespace(session, ns))
