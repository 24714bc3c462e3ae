"""Column helpers shared by the table modules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field


def utc_now() -> str:
    """Timestamps are stored as RFC 3339 UTC strings: portable and sortable as text."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_field(default_factory: Any = dict) -> Any:
    """A JSON column (TEXT on SQLite, json on PostgreSQL)."""
    return Field(default_factory=default_factory, sa_column=Column(JSON, nullable=False))
