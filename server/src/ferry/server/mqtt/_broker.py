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

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import BrokerError
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from ferry.protocol import topics
from ferry.server.mqtt._errors import BrokerStartError

log = logging.getLogger("ferry.server.mqtt")
PasswordCheck = Callable[[str, str], bool]
_CHECKS: dict[str, PasswordCheck] = {}   # plugin config can only carry plain data


def topic_allowed(username: str | None, topic: str | None, action: Action | str,
                  server_username: str) -> bool:
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
    return (len(parts) == 5 and "/".join(parts[:3]) == f"{topics.PREFIX}/groups"
            and parts[3] not in ("", "#") and parts[4] == "notice")


class FerryAuthPlugin(BaseAuthPlugin):
    """Username/password against the check registered under ``Config.check``."""

    @dataclass
    class Config:
        check: str = ""

    async def authenticate(self, *, session: Session) -> bool:
        check = _CHECKS.get(self.config.check)
        if check is None or not session.username or session.password is None:
            return False
        try:
            return await asyncio.to_thread(check, session.username, str(session.password))
        except Exception:  # a database hiccup refuses this login; it must not kill the broker
            log.warning("broker login check failed", exc_info=True,
                        extra={"fields": {"username": session.username}})
            return False


class FerryTopicPlugin(BaseTopicPlugin):
    """Topic access per user, as in the Mosquitto ACL."""

    @dataclass
    class Config:
        server_username: str = ""

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool:
        username = session.username if session is not None else None
        return topic_allowed(username, topic, action or Action.SUBSCRIBE,
                             self.config.server_username)


class EmbeddedBroker:
    """amqtt on ``host:port``; the server user logs in with a per-process random password."""

    def __init__(self, host: str, port: int, *, server_username: str, server_password: str,
                 device_check: PasswordCheck) -> None:
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
        self._broker = Broker(config)
        try:
            await self._broker.start()
        except BrokerError as exc:
            _CHECKS.pop(self._key, None)
            raise BrokerStartError(f"embedded MQTT broker cannot listen on "
                                   f"{self.host}:{self.port}: {exc}") from exc

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
        _CHECKS.pop(self._key, None)
