"""MQTT topic names, all under one versioned prefix.

Devices subscribe to their own notice topic and their groups' notice topics and
publish only to their own status topic; the Mosquitto ACL patterns in
``firmware_examples/`` enforce exactly this shape.
"""

from __future__ import annotations

import json
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


# --- the notice document (plain JSON, unsigned: it carries no authority) ---------------------

NOTICE_TYPE = "notice"
NOTICE_EPOCH_HEADER = "X-Ferry-Epoch"
"""Sent with a device's desired-state request after a notice: the server's cache of an
older fleet epoch then answers from the database (a notice can outrun a replica's cache)."""


def notice_payload(reason: str, rollout_id: str | None, epoch: int | None, issued_at: str) -> bytes:
    """A notice: "fetch your signed desired state"; ``epoch`` is the server's fleet epoch."""
    return json.dumps(
        {
            "_type": NOTICE_TYPE,
            "spec_version": 1,
            "reason": reason,
            "rollout_id": rollout_id,
            "epoch": epoch,
            "issued_at": issued_at,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def notice_epoch(payload: bytes) -> int | None:
    """The fleet epoch a notice names, or None (older servers, or anything malformed)."""
    try:
        value = json.loads(payload).get("epoch")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
