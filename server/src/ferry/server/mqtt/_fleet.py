"""The fleet behind the transport: broker logins and status ingest from the database."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session

from ferry.protocol.documents import StatusReport
from ferry.server.checkin.ingest import ingest_reports
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
    """`StatusSink` over `ferry.server.fleet.ingest_reports`: one transaction per batch.

    The topic's device must exist and not be revoked (Mosquitto's ACL already
    ties the topic to the login, but a revoked device may still hold a
    connection opened before its revocation).
    """

    def __init__(self, engine: Engine, clock: Callable[[], datetime],
                 metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.metrics = metrics

    def ingest(self, batch: Sequence[tuple[str, StatusReport]]) -> dict[str, int]:
        by_device: dict[str, list[StatusReport]] = defaultdict(list)
        for device_id, report in batch:
            by_device[device_id].append(report)
        outcome = {"accepted": 0, "duplicate": 0, "unknown_device": 0, "revoked_device": 0}
        now = self.clock().replace(microsecond=0)
        lags: list[float] = []
        with session_scope(self.engine) as session:
            for device_id, reports in by_device.items():
                device = session.get(Device, device_id)
                if device is None or device.revoked_at is not None:
                    outcome["unknown_device" if device is None else "revoked_device"] += len(reports)
                    continue
                result = ingest_reports(session, device_id, reports, now)
                outcome["accepted"] += len(result.accepted)
                outcome["duplicate"] += len(result.duplicates)
                lags.extend(result.lags_s)
        if self.metrics is not None:  # after the commit: counted once it is durable
            self.metrics.record_reports("mqtt", outcome["accepted"], outcome["duplicate"], lags)
        return outcome
