"""Facts the fleet publishes (`ferry.server.core.domain_events`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceRevoked:
    """The device's credential was withdrawn: it will never report again."""

    device_id: str
