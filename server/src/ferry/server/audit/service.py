"""The audit log: append-only and hash-chained.

``hash = sha256(prev_hash + canonical_json(entry))`` where ``entry`` is the row
without its hash. Changing, inserting or deleting any row breaks the chain from
that row on, and `verify_chain` names the first row that no longer fits.

Appends are serialised by updating the single `AuditHead` row first: that takes
a row lock on PostgreSQL and the write lock on SQLite (transactions there begin
IMMEDIATE), so two writers can never chain onto the same tip. The append runs in
the caller's transaction, so the entry exists exactly when the change does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from ferry.protocol.canonical import canonical_json
from ferry.server.audit.tables import AuditEntry, AuditHead
from ferry.server.core.columns import utc_now

GENESIS_HASH = "0" * 64
VERIFY_BATCH = 1000


def _json_safe(value: Any) -> Any:
    """Canonical JSON refuses floats; record them as their shortest decimal text."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def entry_hash(prev_hash: str, entry: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(entry)).hexdigest()


def _hashed_fields(row: AuditEntry) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at,
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "details": row.details,
        "prev_hash": row.prev_hash,
    }


def append(
    session: Session, *, actor: str, action: str, target: str, details: dict[str, Any] | None = None
) -> AuditEntry:
    """Record one write; call it inside the transaction that makes the change."""
    session.exec(
        update(AuditHead).where(col(AuditHead.id) == 1).values(last_id=col(AuditHead.last_id) + 1)
    )
    head = session.exec(select(AuditHead).where(AuditHead.id == 1)).one()
    session.refresh(head)
    row = AuditEntry(
        id=head.last_id,
        at=utc_now(),
        actor=actor,
        action=action,
        target=target,
        details=_json_safe(details or {}),
        prev_hash=head.last_hash or GENESIS_HASH,
        hash="",
    )
    row.hash = entry_hash(row.prev_hash, _hashed_fields(row))
    head.last_hash = row.hash
    session.add(row)
    session.add(head)
    session.flush()
    return row


def ensure_head(session: Session) -> None:
    """Create the lock row once (start-up)."""
    if session.get(AuditHead, 1) is None:
        session.add(AuditHead(id=1, last_id=0, last_hash=""))
        session.flush()


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    entries: int
    first_bad_id: int | None
    reason: str | None = None


def iter_entries(session: Session, after_id: int = 0) -> Iterator[AuditEntry]:
    """Every entry in id order, read in batches so memory stays bounded."""
    last = after_id
    while True:
        rows = session.exec(
            select(AuditEntry)
            .where(col(AuditEntry.id) > last)
            .order_by(col(AuditEntry.id))
            .limit(VERIFY_BATCH)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id or last


def verify_chain(session: Session) -> ChainReport:
    """Recompute every hash; report the first entry that is missing, edited or misplaced."""
    prev_hash, expected_id, count = GENESIS_HASH, 1, 0
    for row in iter_entries(session):
        count += 1
        if row.id != expected_id:
            return ChainReport(False, count, expected_id, f"entry {expected_id} is missing")
        if row.prev_hash != prev_hash:
            return ChainReport(False, count, row.id, "prev_hash does not match the previous entry")
        if entry_hash(prev_hash, _hashed_fields(row)) != row.hash:
            return ChainReport(False, count, row.id, "content does not match its hash")
        prev_hash, expected_id = row.hash, expected_id + 1
    head = session.get(AuditHead, 1)
    if head is not None and head.last_id != expected_id - 1:
        return ChainReport(
            False,
            count,
            expected_id,
            f"the chain ends at {expected_id - 1} but the head says {head.last_id}",
        )
    return ChainReport(True, count, None)
