"""The MQTT side of one server process: broker (embedded or external), notifier, subscriber.

Started and stopped by the app's lifespan. Everything the transport needs from
the fleet comes through two small interfaces — `DeviceDirectory` (who may log in)
and `StatusSink` (where reports go) — so the transport is testable on its own.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from pathlib import Path
from typing import Protocol

from ferry.protocol import topics
from ferry.server.mqtt._accounts import (
    mosquitto_hash,
    signal_reload,
    verify_mosquitto_hash,
    write_password_file,
)
from ferry.server.mqtt._broker import EmbeddedBroker
from ferry.server.mqtt._link import MqttLink
from ferry.server.mqtt._metrics import MqttMetrics
from ferry.server.mqtt._notifier import MqttNotifier
from ferry.server.mqtt._settings import MqttSettings
from ferry.server.mqtt._subscriber import StatusSink, StatusSubscriber

log = logging.getLogger("ferry.server.mqtt")

CONNECT_WAIT_S = 10.0
PASSWORD_SYNC_INTERVAL_S = 0.5  # coalesce a burst of enrolments into one rewrite


class DeviceDirectory(Protocol):
    """The fleet's view of broker logins (username = device id)."""

    def password_hash(self, device_id: str) -> str | None:
        """The device's ``$7$`` broker password hash; None when unknown or revoked."""

    def logins(self) -> list[tuple[str, str]]:
        """(device id, password hash) of every device that may log in."""


def status_subscription(settings: MqttSettings) -> str:
    """``$share/<group>/ferry/v1/devices/+/status`` where the broker can share (Mosquitto)."""
    if settings.shared_group and not settings.embedded:
        return f"$share/{settings.shared_group}/{topics.ALL_DEVICE_STATUS}"
    return topics.ALL_DEVICE_STATUS


def default_client_id(http_port: int) -> str:
    """Stable across restarts of one replica (its persistent session), unique per replica."""
    return f"ferry-server-{socket.gethostname()}-{http_port}"


class MqttService:
    """Implements the fleet's ``Notifier`` (via `notifier`) and ``BrokerSync``."""

    def __init__(self, settings: MqttSettings, *, directory: DeviceDirectory, sink: StatusSink,
                 metrics: MqttMetrics, client_id: str) -> None:
        self.settings = settings
        self.directory = directory
        self.metrics = metrics
        self.broker: EmbeddedBroker | None = None
        password = settings.password
        if settings.embedded:
            password = secrets.token_urlsafe(24)
            self.broker = EmbeddedBroker(settings.host, settings.port,
                                         server_username=settings.username,
                                         server_password=password,
                                         device_check=self.check_device_password)
        self.subscriber = StatusSubscriber(sink, metrics, batch_size=settings.ingest_batch)
        self.link = MqttLink(settings.broker_url, client_id=client_id,
                             username=settings.username, password=password,
                             subscription=status_subscription(settings),
                             on_message=lambda m: self.subscriber.handle(m.topic, m.payload, m.mid))
        self.subscriber.ack = self.link.ack
        self.notifier = MqttNotifier(self.link, metrics)
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._syncer: threading.Thread | None = None

    @property
    def device_url(self) -> str:
        """The broker URL enrolment hands to devices."""
        return self.settings.device_url

    async def start(self) -> None:
        if self.broker is not None:
            await self.broker.start()
        if self.settings.password_file:  # before connecting: the file has the server's login
            self.sync_passwords()
            self._syncer = threading.Thread(target=self._sync_loop, name="ferry-mqtt-passwords",
                                            daemon=True)
            self._syncer.start()
        self.subscriber.start()
        self.link.start()
        log.info("mqtt started", extra={"fields": {
            "broker": self.settings.broker_url, "embedded": self.settings.embedded,
            "subscription": self.link.subscription}})

    async def stop(self) -> None:
        self._stopping.set()
        self._dirty.set()
        if self._syncer is not None:
            self._syncer.join(timeout=10)
        self.link.stop()
        self.subscriber.stop()
        if self.broker is not None:
            await self.broker.stop()

    def ready(self) -> bool:
        """Connected to the broker with the status subscription acknowledged (/readyz)."""
        return self.link.connected.is_set()

    def wait_connected(self, timeout: float = CONNECT_WAIT_S) -> bool:
        return self.link.wait_connected(timeout)

    def check_device_password(self, device_id: str, password: str) -> bool:
        """Embedded broker login, checked against the fleet database at every connect."""
        stored = self.directory.password_hash(device_id)
        return stored is not None and verify_mosquitto_hash(password, stored)

    def credentials_changed(self) -> None:
        """``BrokerSync``: after enrolment or revocation, Mosquitto's password file follows.

        Does nothing unless ``FERRY_MQTT_PASSWORD_FILE`` is set (the embedded broker
        reads the database directly). While running, a background thread rewrites
        the file at most every 0.5 s, so enrolling 10,000 devices does not rewrite
        it 10,000 times; otherwise it is rewritten now.
        """
        if not self.settings.password_file:
            return
        if self._syncer is not None and self._syncer.is_alive():
            self._dirty.set()
        else:
            self.sync_passwords()

    def sync_passwords(self) -> bool:
        """Rewrite the password file from the fleet, then SIGHUP Mosquitto; True if signalled."""
        logins = self.directory.logins()
        if self.settings.password:
            logins.append((self.settings.username,
                           mosquitto_hash(self.settings.password, secrets.token_bytes(12))))
        write_password_file(Path(self.settings.password_file), logins)
        reloaded = bool(self.settings.pid_file) and signal_reload(Path(self.settings.pid_file))
        log.info("broker password file rewritten", extra={"fields": {
            "path": self.settings.password_file, "logins": len(logins), "reloaded": reloaded}})
        return reloaded

    def _sync_loop(self) -> None:
        while True:
            self._dirty.wait()
            if self._stopping.is_set():
                return
            self._dirty.clear()
            try:
                self.sync_passwords()
            except Exception:  # a failed rewrite is retried at the next change
                log.exception("could not rewrite the broker password file")
            self._stopping.wait(PASSWORD_SYNC_INTERVAL_S)
