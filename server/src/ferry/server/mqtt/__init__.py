"""MQTT transport of the server: wave notices out, status reports in, an embedded broker.

    MqttService        one per server process (lifespan): broker, link, notifier, subscriber
    MqttNotifier       ferry.server.rollouts.Notifier: one retained publish per group
    StatusSubscriber   ferry/v1/devices/+/status → validate → batch → ingest → ack
    MosquittoBroker    the embedded broker when mosquitto is installed: a supervised child
    EmbeddedBroker     amqtt in-process, the fallback without mosquitto (dev/demo)

See docs/mqtt.md.
"""

from ferry.server.mqtt._accounts import (
    mosquitto_hash,
    render_password_file,
    signal_reload,
    verify_mosquitto_hash,
    write_password_file,
)
from ferry.server.mqtt._app import start_mqtt, stop_mqtt
from ferry.server.mqtt._broker import EmbeddedBroker, topic_allowed
from ferry.server.mqtt._errors import BrokerStartError, MqttConfigError, MqttError
from ferry.server.mqtt._fleet import FleetDirectory, FleetStatusSink
from ferry.server.mqtt._link import MqttLink
from ferry.server.mqtt._metrics import MqttMetrics
from ferry.server.mqtt._mosquitto import MosquittoBroker, find_mosquitto, render_acl
from ferry.server.mqtt._notifier import MqttNotifier, notice_payload
from ferry.server.mqtt._service import (
    DeviceDirectory,
    MqttService,
    status_subscription,
)
from ferry.server.mqtt._settings import DEFAULT_PORT, MqttSettings, parse_url
from ferry.server.mqtt._subscriber import (
    StatusMessageError,
    StatusSink,
    StatusSubscriber,
    parse_status_message,
)

__all__ = [
    "DEFAULT_PORT",
    "BrokerStartError",
    "DeviceDirectory",
    "EmbeddedBroker",
    "FleetDirectory",
    "FleetStatusSink",
    "MosquittoBroker",
    "MqttConfigError",
    "MqttError",
    "MqttLink",
    "MqttMetrics",
    "MqttNotifier",
    "MqttService",
    "MqttSettings",
    "StatusMessageError",
    "StatusSink",
    "StatusSubscriber",
    "find_mosquitto",
    "mosquitto_hash",
    "notice_payload",
    "parse_status_message",
    "parse_url",
    "render_acl",
    "render_password_file",
    "signal_reload",
    "start_mqtt",
    "status_subscription",
    "stop_mqtt",
    "topic_allowed",
    "verify_mosquitto_hash",
    "write_password_file",
]
