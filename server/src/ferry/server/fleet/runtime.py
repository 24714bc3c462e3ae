"""The fleet's settings section, the injectable clock, and the hooks other parts plug in.

`FleetRuntime` lives on ``app.state.fleet``. Tests replace ``clock`` to freeze
time; the MQTT part replaces ``notifier`` (one retained publish per group),
``broker_sync`` (rewrite broker credentials after an enrolment or a revocation)
and sets ``broker_url`` (what enrolment tells devices). The settings are the
``fleet`` section of `ferry.server.core.settings.Settings`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from fastapi import FastAPI, Request

from ferry.protocol.timefmt import utcnow
from ferry.server.core.settings import FleetSettings, Settings
from ferry.server.fleet.hooks import (
    BrokerSync,
    DeltaSizes,
    Notifier,
    NullBrokerSync,
    NullDeltaSizes,
    NullNotifier,
    NullStartHook,
    StartHook,
)
from ferry.server.fleet.last_seen import LastSeen

Clock = Callable[[], datetime]
__all__ = ["Clock", "FleetRuntime", "FleetSettings", "get_runtime", "runtime_of"]


@dataclass
class FleetRuntime:
    """Settings plus the swappable collaborators of the fleet part."""

    settings: FleetSettings = field(default_factory=lambda: Settings.from_env().fleet)
    clock: Clock = utcnow
    notifier: Notifier = field(default_factory=NullNotifier)
    broker_sync: BrokerSync = field(default_factory=NullBrokerSync)
    start_hook: StartHook = field(default_factory=NullStartHook)  # delta precompute
    delta_sizes: DeltaSizes = field(default_factory=NullDeltaSizes)  # rollout plans
    last_seen: LastSeen = field(default_factory=LastSeen)
    broker_url: str = ""  # the MQTT URL enrolment hands to devices; empty = poll only

    def now(self) -> datetime:
        return self.clock().replace(microsecond=0)


def runtime_of(app: FastAPI) -> FleetRuntime:
    runtime: FleetRuntime = app.state.fleet
    return runtime


async def get_runtime(request: Request) -> FleetRuntime:
    return runtime_of(request.app)
