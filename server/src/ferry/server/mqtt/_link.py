"""The server's one broker connection (paho-mqtt), shared by publisher and subscriber.

A persistent session (fixed client id, ``clean_session=False``) plus manual
acknowledgement gives at-least-once delivery of status reports across a server
restart: the broker keeps QoS 1 messages for the session while the server is
down, and a message is acknowledged only after its report was committed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from ferry.server.mqtt._settings import parse_url

log = logging.getLogger("ferry.server.mqtt")

KEEPALIVE_S = 30
MessageHandler = Callable[[mqtt.MQTTMessage], None]
StateHandler = Callable[[bool, str], None]  # (subscription live?, why)


class MqttLink:
    """Connects in the background, reconnects on its own, resubscribes on every connect."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        username: str = "",
        password: str = "",
        subscription: str | None = None,
        on_message: MessageHandler | None = None,
        persistent: bool = True,
        on_state: StateHandler | None = None,
    ) -> None:
        self.host, self.port = parse_url(url)
        self.client_id = client_id
        self.subscription = subscription
        self._on_state = on_state or (lambda _live, _why: None)
        self.connected = threading.Event()  # set once connected *and* subscribed
        self.on_publish_error: Callable[[], None] | None = None  # counted by the app's metrics
        self._on_message = on_message
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=not persistent,
            protocol=mqtt.MQTTv311,
            manual_ack=on_message is not None,
        )
        if username:
            self.client.username_pw_set(username, password or None)
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_subscribe = self._subscribed
        if on_message is not None:
            self.client.on_message = lambda _c, _u, msg: on_message(msg)

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait_connected(self, timeout: float) -> bool:
        """Connected and subscribed."""
        return self.connected.wait(timeout)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1; paho queues it while disconnected and sends it after reconnecting.

        A refusal other than "not connected" (queued, sent later) counts as an error.
        """
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if (
            info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)
            and self.on_publish_error is not None
        ):
            self.on_publish_error()

    def ack(self, mid: int) -> None:
        self.client.ack(mid, 1)

    def _connected(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: object,
        reason: ReasonCode,
        _props: object,
    ) -> None:
        if reason.is_failure:
            log.warning(
                "broker refused the connection",
                extra={"fields": {"broker": f"{self.host}:{self.port}", "reason": str(reason)}},
            )
            return
        if self.subscription is None:
            self._set_live(True, "connected")
        else:  # every (re)connect, whatever the broker says about the session it kept
            client.subscribe(self.subscription, qos=1)
        log.info("connected to broker", extra={"fields": {"broker": f"{self.host}:{self.port}"}})

    def _subscribed(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _mid: int,
        codes: list[ReasonCode],
        _props: object,
    ) -> None:
        """Ready only once the status subscription is in place (nothing published is missed)."""
        if any(code.is_failure for code in codes):
            log.error(
                "the broker refused the status subscription",
                extra={
                    "fields": {"subscription": self.subscription, "codes": [str(c) for c in codes]}
                },
            )
            self._set_live(False, "subscription refused")
            return
        self._set_live(True, "subscribed")

    def _disconnected(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: object,
        reason: ReasonCode,
        _props: object,
    ) -> None:
        self._set_live(False, str(reason))
        if reason.value != 0:
            log.warning(
                "lost the broker; reconnecting",
                extra={"fields": {"broker": f"{self.host}:{self.port}", "reason": str(reason)}},
            )

    def _set_live(self, live: bool, why: str) -> None:
        if live:
            self.connected.set()
        else:
            self.connected.clear()
        self._on_state(live, why)
