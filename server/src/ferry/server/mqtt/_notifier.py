"""Wave announcements: one retained QoS 1 publish per group, whatever the fleet size.

A notice carries no authority — it only says "fetch your signed desired state".
Retained, so a device that connects later still hears the latest one; the
``issued_at`` field changes each time, so a re-announcement is a new message.
"""

from __future__ import annotations

from typing import Protocol

from ferry.protocol import topics
from ferry.protocol.timefmt import format_time, utcnow
from ferry.server.mqtt._metrics import MqttMetrics

REASON_DESIRED_STATE = "desired-state"
REASON_KEYRING = "keyring"


def notice_payload(reason: str, rollout_id: str | None, epoch: int | None = None) -> bytes:
    """The notice document of docs/api.md (`ferry.protocol.topics.notice_payload`)."""
    return topics.notice_payload(reason, rollout_id, epoch, format_time(utcnow()))


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...


class MqttNotifier:
    """Implements `ferry.server.rollouts.Notifier` over MQTT."""

    def __init__(self, link: Publisher, metrics: MqttMetrics) -> None:
        self._link = link
        self._metrics = metrics

    def announce(self, groups: list[str], rollout_id: str | None, epoch: int | None = None) -> None:
        """A wave opened or a rollout changed: every device of these groups re-fetches."""
        payload = notice_payload(REASON_DESIRED_STATE, rollout_id, epoch)
        for group in sorted(set(groups)):
            self._link.publish(topics.group_notice(group), payload, retain=True)
            self._metrics.notices.labels("group").inc()

    def notify_devices(self, device_ids: list[str], rollout_id: str | None = None) -> None:
        """Per-device notices, for the rare targeted change (e.g. a rollback of a few devices)."""
        payload = notice_payload(REASON_DESIRED_STATE, rollout_id)
        for device_id in sorted(set(device_ids)):
            self._link.publish(topics.device_notice(device_id), payload, retain=True)
            self._metrics.notices.labels("device").inc()
