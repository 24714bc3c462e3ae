"""Append-only, hash-chained audit log plus the one-row lock that serialises appends."""

from __future__ import annotations

from typing import Any

from sqlmodel import Field, SQLModel

from ferry.server.core.columns import json_field


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_entry"

    id: int | None = Field(
        default=None, primary_key=True, sa_column_kwargs={"autoincrement": False}
    )
    at: str
    actor: str
    action: str = Field(index=True)
    target: str
    details: dict[str, Any] = json_field(dict)
    prev_hash: str
    hash: str


class AuditHead(SQLModel, table=True):
    """Single row (id=1) holding the chain tip; appends update it first to take the lock."""

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True)
    last_id: int = 0
    last_hash: str = ""
