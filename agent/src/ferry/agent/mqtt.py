"""MQTT: notices wake the agent up, status reports go out at QoS 1.

A notice carries no authority (the agent always fetches and verifies its signed
desired state over HTTP), so a forged notice costs one poll and nothing else.
paho's background thread reconnects by itself with a capped delay.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ferry.protocol import topics

log = logging.getLogger("ferry.agent.mqtt")


class MqttLink:
    """One connection to the broker for notices in and status reports out."""

    def __init__(
        self,
        url: str,
        *,
        device_id: str,
        groups: tuple[str, ...],
        username: str | None,
        password: str | None,
        keepalive_s: int,
        publish_timeout_s: float,
        reconnect_max_s: float,
        on_notice: Callable[[], None],
    ) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self._keepalive = keepalive_s
        self._publish_timeout = publish_timeout_s
        self._status_topic = topics.device_status(device_id)
        self._notice_topics = [topics.device_notice(device_id)] + [
            topics.group_notice(g) for g in groups
        ]
        self._on_notice = on_notice
        # The newest fleet epoch a notice named: sent back with the desired-state request,
        # so a replica whose cache is behind answers from its database.
        self.notice_epoch: int | None = None
        self._connected = threading.Event()
        self._started = False
        # The broker binds client ids to logins (docs/mqtt.md): the id is the login, the device id.
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username or device_id)
        if username:
            self.client.username_pw_set(username, password)
        if parts.scheme == "mqtts":
            self.client.tls_set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(reconnect_max_s)))
        self.client.on_connect = self._connected_cb
        self.client.on_disconnect = self._disconnected_cb
        self.client.on_message = self._message_cb

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background; a broker that is down now is retried for ever."""
        self.client.connect_async(self._host, self._port, self._keepalive)
        self.client.loop_start()
        self._started = True

    def stop(self) -> None:
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()
            self._started = False

    def _connected_cb(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("mqtt_refused", extra={"fields": {"reason": str(reason)}})
            return
        client.subscribe([(topic, 1) for topic in self._notice_topics])
        self._connected.set()
        log.info("mqtt_connected", extra={"fields": {"broker": f"{self._host}:{self._port}"}})
        self._on_notice()  # we may have missed notices while disconnected

    def _disconnected_cb(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if self._connected.is_set():
            log.info("mqtt_disconnected", extra={"fields": {"reason": str(reason)}})
        self._connected.clear()

    def _message_cb(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        log.info("notice", extra={"fields": {"topic": message.topic}})
        epoch = topics.notice_epoch(bytes(message.payload))
        if epoch is not None and (self.notice_epoch is None or epoch > self.notice_epoch):
            self.notice_epoch = epoch
        self._on_notice()

    def publish(self, report: dict[str, Any]) -> bool:
        """Publish one report at QoS 1; True only once the broker acknowledged it."""
        if not self.connected:
            return False
        payload = json.dumps(report, sort_keys=True, separators=(",", ":"))
        try:
            info = self.client.publish(self._status_topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return False
            info.wait_for_publish(self._publish_timeout)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()
