"""The hooks through which the fleet reaches the broker and the delta builder, and no-ops.

Announcing a wave costs one retained publish per group, never one operation per
device: devices woken by a notice fetch their signed desired state over HTTP,
which the server computes on request.
"""

from __future__ import annotations

from typing import Protocol


class Notifier(Protocol):
    """Tell the devices of ``groups`` that their desired state may have changed."""

    def announce(self, groups: list[str], rollout_id: str, epoch: int | None = None) -> None:
        """``epoch``: the fleet epoch the change committed at (devices send it back)."""


class BrokerSync(Protocol):
    """Re-read `ferry.server.fleet.broker_credentials` and apply it to the broker."""

    def credentials_changed(self) -> None: ...


class StartHook(Protocol):
    """Told (after commit, from any thread) that a rollout entered wave 0; must never raise."""

    def rollout_started(self, rollout_pk: int) -> None: ...


class DeltaSizes(Protocol):
    """What a device on ``from_sha256`` would download for ``to_sha256`` as a delta.

    None when no delta is ready (not built yet, or not worth it): the device
    downloads the whole file. Asking may queue a build. Any thread; never raises.
    """

    def delta_size(self, from_sha256: str, to_sha256: str) -> int | None: ...


class NullDeltaSizes:
    """Used when deltas are off: every device downloads whole files."""

    def delta_size(self, from_sha256: str, to_sha256: str) -> int | None:
        return None


class NullNotifier:
    """Used when MQTT is off: devices still converge by polling."""

    def announce(self, groups: list[str], rollout_id: str, epoch: int | None = None) -> None:
        return None


class NullBrokerSync:
    """Used when MQTT is off: there are no broker credentials to withdraw."""

    def credentials_changed(self) -> None:
        return None


class NullStartHook:
    """Used when deltas are off: nothing to prepare when a rollout starts."""

    def rollout_started(self, rollout_pk: int) -> None:
        return None
