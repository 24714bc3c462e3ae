"""MQTT topic names, all under one versioned prefix.

Devices subscribe to their own notice topic and their groups' notice topics and
publish only to their own status topic; the Mosquitto ACL patterns in
``firmware_examples/`` enforce exactly this shape.
"""

from __future__ import annotations

import re

PREFIX = "ferry/v1"
_SEGMENT = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Server-side subscriptions.
ALL_DEVICE_STATUS = f"{PREFIX}/devices/+/status"


def _segment(value: str) -> str:
    """Refuse ids that would change a topic's meaning (``/``, ``+``, ``#``)."""
    if not _SEGMENT.match(value):
        raise ValueError(f"{value!r} cannot be used in an MQTT topic")
    return value


def device_notice(device_id: str) -> str:
    """Server → one device: "your desired state may have changed"."""
    return f"{PREFIX}/devices/{_segment(device_id)}/notice"


def device_status(device_id: str) -> str:
    """Device → server: status reports of one device."""
    return f"{PREFIX}/devices/{_segment(device_id)}/status"


def group_notice(group: str) -> str:
    """Server → every device of a group: one retained message per wave, not per device."""
    return f"{PREFIX}/groups/{_segment(group)}/notice"


def device_id_from_status_topic(topic: str) -> str | None:
    """The device id in a status topic, or None when the topic is not one."""
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:3]) == f"{PREFIX}/devices" and parts[4] == "status":
        return parts[3]
    return None
