"""Errors of the MQTT transport.

MqttError                 mqtt_error
├── MqttConfigError       mqtt_config_invalid
└── BrokerStartError      broker_start_failed
"""

from __future__ import annotations


class MqttError(Exception):
    """Base of the MQTT transport's errors."""

    code = "mqtt_error"


class MqttConfigError(MqttError):
    """A ``FERRY_MQTT_*`` setting is invalid."""

    code = "mqtt_config_invalid"


class BrokerStartError(MqttError):
    """The embedded broker could not start (port taken, bad bind address)."""

    code = "broker_start_failed"
