"""Rollouts: the persisted state machine, its gate engine, sync status and alias bindings.

The MQTT part implements `Notifier` (and `BrokerSync`) and installs them on
``app.state.fleet``; without MQTT the no-op defaults apply and devices poll.
"""

from ferry.server.rollouts.notifier import (
    BrokerSync,
    Notifier,
    NullBrokerSync,
    NullNotifier,
    NullStartHook,
    StartHook,
)

__all__ = ["BrokerSync", "Notifier", "NullBrokerSync", "NullNotifier", "NullStartHook",
           "StartHook"]
