"""The audit page: a searchable page of the hash-chained log and the chain's verification."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_
from sqlmodel import Session, col, select

from ferry.server.audit.service import verify_chain
from ferry.server.audit.tables import AuditEntry

PAGE = 100


@dataclass(frozen=True)
class AuditFilter:
    q: str = ""  # in actor, action or target
    action: str = ""  # prefix, e.g. "rollout."
    before: int | None = None  # entries with a smaller id (paging back in time)


def audit_view(session: Session, flt: AuditFilter) -> dict[str, Any]:
    """Newest first; the whole chain is re-verified (bounded memory, see `verify_chain`)."""
    stmt = select(AuditEntry)
    if flt.q:
        needle = flt.q.strip()
        stmt = stmt.where(
            or_(
                col(AuditEntry.actor).contains(needle, autoescape=True),
                col(AuditEntry.action).contains(needle, autoescape=True),
                col(AuditEntry.target).contains(needle, autoescape=True),
            )
        )
    if flt.action:
        stmt = stmt.where(col(AuditEntry.action).startswith(flt.action, autoescape=True))
    if flt.before is not None:
        stmt = stmt.where(col(AuditEntry.id) < flt.before)
    rows = list(session.exec(stmt.order_by(col(AuditEntry.id).desc()).limit(PAGE + 1)).all())
    more, rows = len(rows) > PAGE, rows[:PAGE]
    return {
        "entries": rows,
        "more": more,
        "filter": flt,
        "chain": verify_chain(session),
        "next_before": rows[-1].id if more and rows else None,
    }
