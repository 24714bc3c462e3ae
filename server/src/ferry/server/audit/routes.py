"""Audit log: read, export as JSON Lines, verify the hash chain (admin only)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from sqlmodel import Session, col, select

from ferry.server.api.deps import Admin, CtxDep, ReadSessionDep
from ferry.server.audit import service as audit
from ferry.server.audit.schemas import AuditEntryPublic, AuditVerify
from ferry.server.audit.tables import AuditEntry

router = APIRouter(tags=["audit"])


def _public(row: AuditEntry) -> AuditEntryPublic:
    return AuditEntryPublic.model_validate(row, from_attributes=True)


@router.get("/audit")
def list_entries(
    session: ReadSessionDep,
    _: Admin,
    after_id: Annotated[int, Query(ge=0, le=2**53 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntryPublic]:
    rows = session.exec(
        select(AuditEntry)
        .where(col(AuditEntry.id) > after_id)
        .order_by(col(AuditEntry.id))
        .limit(limit)
    ).all()
    return [_public(row) for row in rows]


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}}}}},
)
def export(ctx: CtxDep, _: Admin) -> StreamingResponse:
    """Every entry as one JSON object per line, streamed in batches."""

    def lines() -> Iterator[bytes]:
        with Session(ctx.engine) as session:
            for row in audit.iter_entries(session):
                yield json.dumps(_public(row).model_dump(), sort_keys=True).encode() + b"\n"
            session.rollback()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/audit/verify")
def verify(session: ReadSessionDep, _: Admin) -> AuditVerify:
    report = audit.verify_chain(session)
    return AuditVerify(
        ok=report.ok, entries=report.entries, first_bad_id=report.first_bad_id, reason=report.reason
    )
