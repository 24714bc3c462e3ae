"""A notice's fleet epoch is kept by the agent and sent back with its next check-in."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from ferry.agent.mqtt import MqttLink
from ferry.protocol import topics


def _link(woken: list[int]) -> MqttLink:
    return MqttLink(
        "mqtt://127.0.0.1:9",
        device_id="dev-1",
        groups=("all",),
        username="dev-1",
        password="x",
        keepalive_s=30,
        publish_timeout_s=1,
        reconnect_max_s=1,
        on_notice=lambda: woken.append(1),
    )


def _message(payload: bytes) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(topic=topics.group_notice("all").encode())
    message.payload = payload
    return message


def test_the_newest_notice_epoch_is_kept_and_junk_is_ignored() -> None:
    woken: list[int] = []
    link = _link(woken)
    for payload in (
        topics.notice_payload("desired-state", "r-1", 7, "2026-12-03T12:00:00Z"),
        topics.notice_payload("desired-state", "r-1", 5, "2026-12-03T12:00:01Z"),
        b"not json",
        b'{"epoch": -3}',
        b'{"epoch": true}',
        topics.notice_payload("desired-state", None, None, "2026-12-03T12:00:02Z"),
    ):
        link._message_cb(link.client, None, _message(payload))
    assert link.notice_epoch == 7
    assert len(woken) == 6, "every notice wakes the agent, whatever its payload"
