"""Timestamps in signed documents: RFC 3339 UTC strings with second precision.

Strings rather than numbers keep documents readable and float-free; one fixed
format ("2026-11-25T03:00:00Z") keeps them canonical.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ferry.protocol.errors import MalformedError

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utcnow() -> datetime:
    """The current time, timezone-aware, truncated to whole seconds."""
    return datetime.now(UTC).replace(microsecond=0)


def format_time(moment: datetime) -> str:
    """Format an aware datetime as the one canonical timestamp string."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: pass a timezone-aware UTC datetime")
    return moment.astimezone(UTC).strftime(FORMAT)


def parse_time(text: object, field: str = "timestamp") -> datetime:
    """Parse a canonical timestamp, refusing every other spelling."""
    if not isinstance(text, str):
        raise MalformedError(f"{field}: expected a timestamp string like 2026-11-25T03:00:00Z")
    try:
        moment = datetime.strptime(text, FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise MalformedError(f"{field}: {text!r} is not of the form 2026-11-25T03:00:00Z") from exc
    if format_time(moment) != text:
        raise MalformedError(f"{field}: {text!r} is not canonical")
    return moment
