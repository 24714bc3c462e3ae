"""MQTT settings: the ``mqtt`` section of `ferry.server.core.settings.Settings`.

``ferry server`` turns MQTT on by default (``FERRY_MQTT_ENABLED``), with an
embedded broker on 127.0.0.1:1885 (never 1883, which a system Mosquitto may
own); ``FERRY_MQTT_URL`` points the server at an external broker (Mosquitto)
instead and implies ``FERRY_MQTT_ENABLED``. An app built by `create_app` alone
(tests) has MQTT off unless its settings say otherwise.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ferry.server.core.settings import (
    DEFAULT_MQTT_PORT,
    EMBEDDED_BROKERS,
    SERVER_USERNAME,
    MqttSettings,
    SettingsError,
)
from ferry.server.mqtt._errors import MqttConfigError

DEFAULT_PORT = DEFAULT_MQTT_PORT
__all__ = [
    "DEFAULT_PORT",
    "EMBEDDED_BROKERS",
    "SERVER_USERNAME",
    "MqttSettings",
    "SettingsError",
    "parse_url",
]


def parse_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` → (host, port); the port defaults to 1883 for external brokers."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise MqttConfigError(f"broker URL {url!r} must look like mqtt://host:port")
    return parts.hostname, parts.port or 1883
