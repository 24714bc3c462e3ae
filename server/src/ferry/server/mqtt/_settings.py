"""MQTT settings, read from ``FERRY_MQTT_*`` environment variables.

Kept apart from `ferry.server.core.settings.Settings` so that the transport can be
configured (and tested) on its own. ``ferry server`` turns MQTT on by default
(``FERRY_MQTT_ENABLED``), with an embedded broker on 127.0.0.1:1885 (never 1883,
which a system Mosquitto may own); ``FERRY_MQTT_URL`` points the server at an
external broker (Mosquitto) instead and implies ``FERRY_MQTT_ENABLED``. An app
built by `create_app` alone (tests) has MQTT off unless told otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from ferry.protocol import topics
from ferry.server.mqtt._errors import MqttConfigError

ENV = "FERRY_MQTT_"
DEFAULT_PORT = 1885
# Not a valid device id ("@" is outside [A-Za-z0-9._:-]): no device can ever hold this login
# or, with client ids bound to logins, this client id.
SERVER_USERNAME = "ferry@server"
EMBEDDED_BROKERS = ("auto", "mosquitto", "amqtt")


@dataclass(frozen=True)
class MqttSettings:
    """Where the broker is, how the server logs in, and what devices are told."""

    enabled: bool = False
    url: str = ""                  # external broker; empty = start the embedded one
    host: str = "127.0.0.1"        # embedded broker bind address
    port: int = DEFAULT_PORT       # embedded broker port
    public_url: str = ""           # what enrolment tells devices; defaults to the broker URL
    username: str = SERVER_USERNAME
    password: str = ""             # external broker: the server user's password
    # "$share/<group>/…" splits status traffic between replicas, but Mosquitto 2.0 does not
    # restore a shared subscription after a crash: empty (default) = a plain subscription,
    # which the broker's persistence restores (docs/mqtt.md, "After a broker crash").
    shared_group: str = ""
    password_file: str = ""        # Mosquitto password file the server keeps up to date
    pid_file: str = ""             # Mosquitto pid file: SIGHUP after rewriting passwords
    ingest_batch: int = 200        # status reports per database transaction
    client_id: str = ""            # defaults to the username (brokers bind ids to logins)
    embedded_broker: str = "auto"  # auto: mosquitto when installed, else amqtt
    mosquitto_binary: str = ""     # empty: /usr/sbin/mosquitto, /usr/local/sbin, PATH
    state_dir: str = ""            # embedded Mosquitto's files; `ferry server`: <data>/mqtt
    operator_password_file: str = ""  # logins the operator keeps; merged, never written

    @property
    def embedded(self) -> bool:
        return self.enabled and not self.url

    @property
    def broker_url(self) -> str:
        return self.url or f"mqtt://{self.host}:{self.port}"

    @property
    def session_id(self) -> str:
        """The server's MQTT client id: its login, as the broker binds ids to logins."""
        return self.client_id or self.username

    @property
    def device_url(self) -> str:
        return self.public_url or self.broker_url

    def with_overrides(self, **changes: object) -> MqttSettings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> MqttSettings:
        env = os.environ if environ is None else environ
        kwargs: dict[str, object] = {}
        for name, kind in _FIELDS.items():
            raw = env.get(ENV + name.upper())
            if raw is None or (raw == "" and kind is not str):
                continue
            kwargs[name] = _convert(name, raw, kind)
        if kwargs.get("url") and "enabled" not in kwargs:
            kwargs["enabled"] = True
        settings = cls(**kwargs)  # type: ignore[arg-type]
        if settings.url:
            parse_url(settings.url)
        if _is_device_id(settings.username):
            raise MqttConfigError(f"{ENV}USERNAME={settings.username!r} could be a device's id "
                                  "(and its client id): use a name with '@', e.g. "
                                  f"{SERVER_USERNAME!r}")
        if settings.embedded_broker not in EMBEDDED_BROKERS:
            raise MqttConfigError(f"{ENV}EMBEDDED_BROKER={settings.embedded_broker!r} must be "
                                  f"one of {', '.join(EMBEDDED_BROKERS)}")
        return settings


_FIELDS: dict[str, type] = {
    "enabled": bool, "url": str, "host": str, "port": int, "public_url": str,
    "username": str, "password": str, "shared_group": str,
    "password_file": str, "pid_file": str, "ingest_batch": int, "client_id": str,
    "embedded_broker": str, "mosquitto_binary": str, "state_dir": str,
    "operator_password_file": str,
}


def _is_device_id(name: str) -> bool:
    try:
        topics.device_status(name)
    except ValueError:
        return False
    return True


def _convert(name: str, raw: str, kind: type) -> object:
    if kind is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    try:
        return kind(raw)
    except ValueError as exc:
        raise MqttConfigError(f"{ENV}{name.upper()}={raw!r} is not a valid {kind.__name__}") from exc


def parse_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` → (host, port); the port defaults to 1883 for external brokers."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise MqttConfigError(f"broker URL {url!r} must look like mqtt://host:port")
    return parts.hostname, parts.port or 1883
