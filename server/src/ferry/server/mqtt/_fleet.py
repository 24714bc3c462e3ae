"""The fleet behind the transport: broker logins and status ingest from the database."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session

from ferry.protocol.documents import StatusReport
from ferry.server.checkin.ingest import Touch, ingest_batch
from ferry.server.core.db import session_scope
from ferry.server.core.observability import Metrics
from ferry.server.fleet.credentials import broker_credentials
from ferry.server.fleet.tables import Device


class FleetDirectory:
    """`DeviceDirectory` over the device table, through the read engine (logins never write)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def password_hash(self, device_id: str) -> str | None:
        with Session(self.engine) as session:
            device = session.get(Device, device_id)
            live = device is not None and device.revoked_at is None
            stored = device.mqtt_password_hash if device is not None and live else ""
            session.rollback()
        return stored or None

    def logins(self) -> list[tuple[str, str]]:
        with Session(self.engine) as session:
            rows = broker_credentials(session)
            session.rollback()
        return [(row.username, row.password_hash) for row in rows]


class FleetStatusSink:
    """`StatusSink` over `ferry.server.checkin.ingest.ingest_batch`: one transaction per batch.

    The topic's device must exist and not be revoked (Mosquitto's ACL already
    ties the topic to the login, but a revoked device may still hold a
    connection opened before its revocation).
    """

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime],
        metrics: Metrics | None = None,
        touch: Touch | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.metrics = metrics
        self.touch = touch  # last_seen_at noted for the batched writer (else written per batch)

    def ingest(self, batch: Sequence[tuple[str, StatusReport]]) -> dict[str, int]:
        now = self.clock().replace(microsecond=0)
        with session_scope(self.engine) as session:
            result = ingest_batch(session, [report for _, report in batch], now, self.touch)
        outcome = {
            "accepted": len(result.accepted),
            "duplicate": len(result.duplicates),
            "unknown_device": len(result.unknown_device),
            "revoked_device": len(result.revoked_device),
        }
        if self.metrics is not None:  # after the commit: counted once it is durable
            self.metrics.record_reports(
                "mqtt", outcome["accepted"], outcome["duplicate"], result.lags_s
            )
        return outcome
