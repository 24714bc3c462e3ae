"""The MQTT side of one server process: broker (embedded or external), notifier, subscriber.

Started and stopped by the app's lifespan. Everything the transport needs from
the fleet comes through two small interfaces — `DeviceDirectory` (who may log in)
and `StatusSink` (where reports go) — so the transport is testable on its own.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import tempfile
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
from ferry.server.mqtt._errors import MqttConfigError
from ferry.server.mqtt._link import MqttLink
from ferry.server.mqtt._metrics import MqttMetrics
from ferry.server.mqtt._mosquitto import MosquittoBroker, find_mosquitto
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


class Broker(Protocol):
    """An embedded broker the service starts and stops (Mosquitto child or amqtt)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def embedded_mosquitto(settings: MqttSettings) -> str | None:
    """The mosquitto binary the embedded mode runs, or None for the amqtt fallback."""
    if settings.embedded_broker == "amqtt":
        return None
    binary = find_mosquitto(settings.mosquitto_binary)
    if binary is None and settings.embedded_broker == "mosquitto":
        raise MqttConfigError(
            "FERRY_MQTT_EMBEDDED_BROKER=mosquitto but no mosquitto executable "
            f"was found ({settings.mosquitto_binary or 'PATH, /usr/sbin'})"
        )
    return binary


def read_operator_logins(path: Path) -> list[tuple[str, str]]:
    """``username:hash`` lines of the operator's password file (the server never writes it)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    logins = []
    for line in text.splitlines():
        user, sep, pw_hash = line.strip().partition(":")
        if sep and user and pw_hash and not user.startswith("#"):
            logins.append((user, pw_hash))
    return logins


class MqttService:
    """Implements the fleet's ``Notifier`` (via `notifier`) and ``BrokerSync``."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        directory: DeviceDirectory,
        sink: StatusSink,
        metrics: MqttMetrics,
        client_id: str | None = None,
    ) -> None:
        self.directory = directory
        self.metrics = metrics
        self.broker: Broker | None = None
        if settings.embedded:
            settings = self._embedded_broker(settings)
        self.settings = settings
        self.subscriber = StatusSubscriber(sink, metrics, batch_size=settings.ingest_batch)
        self.link = MqttLink(
            settings.broker_url,
            client_id=client_id or settings.session_id,
            username=settings.username,
            password=settings.password,
            subscription=status_subscription(settings),
            on_message=lambda m: self.subscriber.handle(m.topic, bytes(m.payload), m.mid),
            on_state=self._link_state,
        )
        self.subscriber.ack = self.link.ack
        self.notifier = MqttNotifier(self.link, metrics)
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._syncer: threading.Thread | None = None
        self._was_live = False

    def _embedded_broker(self, settings: MqttSettings) -> MqttSettings:
        """Mosquitto as a child process when installed, else amqtt; the server's login is random."""
        password = secrets.token_urlsafe(24)
        binary = embedded_mosquitto(settings)
        if binary is None:
            why = (
                "FERRY_MQTT_EMBEDDED_BROKER=amqtt"
                if settings.embedded_broker == "amqtt"
                else "mosquitto is not installed"
            )
            log.warning(
                f"embedded broker: amqtt fallback ({why}): development only, no "
                "persistence across restarts; install mosquitto for the default broker "
                "(docs/mqtt.md)"
            )
            self.broker = EmbeddedBroker(
                settings.host,
                settings.port,
                server_username=settings.username,
                server_password=password,
                device_check=self.check_device_password,
            )
            return dataclasses.replace(settings, password=password)
        state = Path(settings.state_dir or tempfile.mkdtemp(prefix="ferry-mqtt-"))
        self.broker = MosquittoBroker(
            binary,
            state,
            settings.host,
            settings.port,
            server_usernames=[settings.username],
            operator_acl=state / "operator.acl",
            write_passwords=lambda: self.sync_passwords(reload=False),
        )
        return dataclasses.replace(
            settings,
            password=password,
            password_file=str(state / "passwd"),
            pid_file=str(state / "mosquitto.pid"),
            operator_password_file=settings.operator_password_file
            or str(state / "operator.passwd"),
        )

    @property
    def device_url(self) -> str:
        """The broker URL enrolment hands to devices."""
        return self.settings.device_url

    @property
    def live(self) -> bool:
        """Connected and the status subscription granted: reports are being ingested."""
        return self.link.connected.is_set()

    async def start(self) -> None:
        if self.settings.password_file and not isinstance(self.broker, MosquittoBroker):
            self.sync_passwords()  # before connecting: the file has the server's login
        if self.broker is not None:  # our Mosquitto writes it once its state dir is ours
            await self.broker.start()
        if self.settings.password_file:
            self._syncer = threading.Thread(
                target=self._sync_loop, name="ferry-mqtt-passwords", daemon=True
            )
            self._syncer.start()
        self.subscriber.start()
        self.link.start()
        log.info(
            "mqtt started",
            extra={
                "fields": {
                    "broker": self.settings.broker_url,
                    "embedded": self.settings.embedded,
                    "subscription": self.link.subscription,
                }
            },
        )

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
        return self.live

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

    def sync_passwords(self, *, reload: bool = True) -> bool:
        """Rewrite the password file from the fleet, then SIGHUP Mosquitto; True if signalled."""
        logins = self._merged_logins()
        write_password_file(Path(self.settings.password_file), logins)
        reloaded = (
            reload and bool(self.settings.pid_file) and signal_reload(Path(self.settings.pid_file))
        )
        log.info(
            "broker password file rewritten",
            extra={
                "fields": {
                    "path": self.settings.password_file,
                    "logins": len(logins),
                    "reloaded": reloaded,
                }
            },
        )
        return reloaded

    def _merged_logins(self) -> list[tuple[str, str]]:
        """Devices, then the operator's logins (they win), then the server's own (it wins).

        Mosquitto reads one password file per listener, so the operator's file
        (an observer, a bridge) is merged into the one the server writes.
        """
        merged = dict(self.directory.logins())
        operator_file = self.settings.operator_password_file
        for user, pw_hash in read_operator_logins(Path(operator_file)) if operator_file else []:
            if user == self.settings.username:  # replicas share one file listing all of them
                continue
            if user in merged:
                log.warning(
                    "operator password file: a login shadows a device's",
                    extra={"fields": {"path": operator_file, "username": user}},
                )
            merged[user] = pw_hash
        if self.settings.password:
            merged[self.settings.username] = mosquitto_hash(
                self.settings.password, secrets.token_bytes(12)
            )
        return list(merged.items())

    def _link_state(self, live: bool, reason: str) -> None:
        """Make a lost (or stolen) status subscription visible: log, metrics, /readyz."""
        self.metrics.connected.set(1 if live else 0)
        if live:
            if not self._was_live:
                log.info(
                    "status subscription live",
                    extra={"fields": {"subscription": self.link.subscription}},
                )
        elif self._was_live and not self._stopping.is_set():
            self.metrics.subscription_lost.inc()
            log.error(
                "status subscription lost: reports are not ingested until it is back "
                "(broker restart, network, or another client took this session)",
                extra={
                    "fields": {
                        "broker": self.settings.broker_url,
                        "reason": reason,
                        "client_id": self.link.client_id,
                    }
                },
            )
        self._was_live = live

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
