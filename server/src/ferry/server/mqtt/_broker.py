"""The embedded broker (amqtt, in the server's event loop) for zero-set-up machines.

Development and demos only: production uses Mosquitto (``FERRY_MQTT_URL``). It
still enforces what Mosquitto's ACL patterns enforce: devices log in with their
broker password (checked against the fleet database on every connect, so a
revoked device is refused at its next connection), read only their own and group
notice topics, and publish only their own status topic. Limitations against
Mosquitto: no shared subscriptions (one server process only), no persistence
across restarts (retained notices and queued messages live in memory), and
already-open connections of a device revoked meanwhile stay open until they drop.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, BrokerError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from ferry.protocol import topics
from ferry.server.mqtt._errors import BrokerStartError

log = logging.getLogger("ferry.server.mqtt")
PasswordCheck = Callable[[str, str], bool]
_CHECKS: dict[str, PasswordCheck] = {}  # plugin config can only carry plain data


def topic_allowed(
    username: str | None, topic: str | None, action: Action | str, server_username: str
) -> bool:
    """The ACL of ``firmware_examples/mosquitto/acl``, for one user and one topic (filter)."""
    if not username or not topic:
        return False
    if username == server_username:
        return True
    try:
        own_status, own_notice = topics.device_status(username), topics.device_notice(username)
    except ValueError:
        return False
    if action == Action.PUBLISH:
        return topic == own_status
    return topic == own_notice or _is_group_notice(topic)


def _is_group_notice(topic: str) -> bool:
    parts = topic.split("/")
    return (
        len(parts) == 5
        and "/".join(parts[:3]) == f"{topics.PREFIX}/groups"
        and parts[3] not in ("", "#")
        and parts[4] == "notice"
    )


class FerryAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type hints
    """Username/password against the check registered under ``Config.check``."""

    @dataclass
    class Config:
        check: str = ""

    async def authenticate(self, *, session: Session) -> bool:
        check = _CHECKS.get(self.config.check)
        if check is None or not session.username or session.password is None:
            return False
        if session.client_id != session.username:  # also refused before (`_GuardedBroker`)
            return False
        try:
            return await asyncio.to_thread(check, session.username, str(session.password))
        except Exception:  # a database hiccup refuses this login; it must not kill the broker
            log.warning(
                "broker login check failed",
                exc_info=True,
                extra={"fields": {"username": session.username}},
            )
            return False


class FerryTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt ships no type hints
    """Topic access per user, as in the Mosquitto ACL."""

    @dataclass
    class Config:
        server_username: str = ""

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        username = session.username if session is not None else None
        return topic_allowed(
            username, topic, action or Action.SUBSCRIBE, self.config.server_username
        )


class _Replay(ReaderAdapter):  # type: ignore[misc]
    """A reader that yields ``prefix`` first (the CONNECT already read), then the stream."""

    def __init__(self, prefix: bytes, inner: ReaderAdapter) -> None:
        self._prefix, self._inner = prefix, inner

    async def read(self, n: int = -1) -> bytes:
        if not self._prefix:
            data: bytes = await self._inner.read(n)
            return data
        size = len(self._prefix) if n < 0 else n
        head, self._prefix = self._prefix[:size], self._prefix[size:]
        return head

    def feed_eof(self) -> None:
        self._inner.feed_eof()


class _GuardedBroker(Broker):  # type: ignore[misc]
    """amqtt that authenticates a CONNECT before it touches the session of that client id.

    amqtt 0.12 deletes (clean session) or takes over (persistent session) the
    existing session of a client id first and authenticates afterwards, so a
    refused login could still strip the server's subscription. Here a CONNECT
    whose login fails, or whose client id is not its username, is answered
    "not authorised" before amqtt sees it.
    """

    def __init__(self, config: dict[str, Any], check: PasswordCheck) -> None:
        super().__init__(config)
        self._check = check

    async def _initialize_client_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        remote_address: str,
        remote_port: int,
    ) -> tuple[BrokerProtocolHandler, Session]:
        try:
            connect = await ConnectPacket.from_stream(reader)
        except NoDataError as exc:
            raise AMQTTError(exc) from exc
        if not await self._allowed(connect):
            writer.write(ConnackPacket.build(0, NOT_AUTHORIZED).to_bytes())
            await writer.drain()
            await writer.close()
            raise AMQTTError(f"login refused from {remote_address}:{remote_port}")
        replay = _Replay(bytes(connect.to_bytes()), reader)
        started: tuple[BrokerProtocolHandler, Session] = await super()._initialize_client_session(
            replay, writer, remote_address, remote_port
        )
        return started

    async def _allowed(self, connect: ConnectPacket) -> bool:
        payload = connect.payload
        username = payload.username if payload is not None else None
        password = payload.password if payload is not None else None
        client_id = payload.client_id if payload is not None else None
        if not username or password is None:
            return False
        if client_id != username:
            log.warning(
                "broker login refused: client id is not the login",
                extra={"fields": {"username": username, "client_id": client_id}},
            )
            return False
        try:
            return await asyncio.to_thread(self._check, username, str(password))
        except Exception:  # a database hiccup refuses this login; it must not kill the broker
            log.warning(
                "broker login check failed", exc_info=True, extra={"fields": {"username": username}}
            )
            return False


class EmbeddedBroker:
    """amqtt on ``host:port``; the server user logs in with a per-process random password."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        server_username: str,
        server_password: str,
        device_check: PasswordCheck,
    ) -> None:
        self.host, self.port = host, port
        self.server_username = server_username
        self._server_password = server_password
        self._device_check = device_check
        self._key = uuid.uuid4().hex
        self._broker: Broker | None = None

    def check(self, username: str, password: str) -> bool:
        if username == self.server_username:
            return hmac.compare_digest(password.encode(), self._server_password.encode())
        return self._device_check(username, password)

    async def start(self) -> None:
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        _CHECKS[self._key] = self.check
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                f"{__name__}.FerryAuthPlugin": {"check": self._key},
                f"{__name__}.FerryTopicPlugin": {"server_username": self.server_username},
            },
        }
        self._broker = _GuardedBroker(config, self.check)
        try:
            await self._broker.start()
        except BrokerError as exc:
            _CHECKS.pop(self._key, None)
            raise BrokerStartError(
                f"embedded MQTT broker cannot listen on {self.host}:{self.port}: {exc}"
            ) from exc

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
        _CHECKS.pop(self._key, None)
