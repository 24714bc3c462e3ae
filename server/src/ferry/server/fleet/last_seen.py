"""Device ``last_seen_at``, written in batches instead of once per check-in.

A steady-state check-in only reads: the device's stored desired state is still
right, so serving it needs no write transaction — except to record that the
device was seen. Writing that per request would serialise every check-in on
SQLite's single writer (and cost a row lock and a commit on PostgreSQL). So the
fast path only notes the time here, and a `ferry.server.core.periodic.Periodic` task
writes the notes every ``last_seen_flush_s`` seconds in one transaction. ``last_seen_at`` is
therefore up to that long behind; a crash loses at most that much of it, never
anything a rollout decides on (reports are written at once).
"""

from __future__ import annotations

import threading
from datetime import datetime

from sqlalchemy import bindparam, or_, update
from sqlalchemy.engine import Engine

from ferry.protocol.timefmt import format_time
from ferry.server.core.db import session_scope
from ferry.server.fleet.tables import Device

# sqlmodel's SQLModel does not declare `__table__` (SQLAlchemy sets it on table models).
_DEVICES = Device.__table__  # type: ignore[attr-defined]


class LastSeen:
    """Thread-safe notes of (device id → newest time seen), taken by `flush`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, datetime] = {}

    def touch(self, device_id: str, moment: datetime) -> None:
        """Note a sighting (formatted at flush time: this is on every check-in's path)."""
        with self._lock:
            seen = self._pending.get(device_id)
            if seen is None or moment > seen:
                self._pending[device_id] = moment

    def flush(self, engine: Engine) -> int:
        """Write the notes (never moving a newer stored time backwards); returns how many."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        statement = (
            update(_DEVICES)
            .where(
                _DEVICES.c.id == bindparam("device"),
                or_(
                    _DEVICES.c.last_seen_at.is_(None), _DEVICES.c.last_seen_at < bindparam("stamp")
                ),
            )
            .values(last_seen_at=bindparam("stamp"))
        )
        rows = [
            {"device": device, "stamp": format_time(moment)}
            for device, moment in sorted(pending.items())
        ]
        try:
            with session_scope(engine) as session:
                session.connection().execute(statement, rows)
        except Exception:
            self._restore(pending)
            raise
        return len(rows)

    def _restore(self, pending: dict[str, datetime]) -> None:
        """Put notes back after a failed write, keeping any newer one taken meanwhile."""
        for device_id, moment in pending.items():
            self.touch(device_id, moment)
