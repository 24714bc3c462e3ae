"""Fleet and rollout settings, the injectable clock, and the hooks other parts plug in.

`FleetRuntime` lives on ``app.state.fleet``. Tests replace ``clock`` to freeze
time; the MQTT part replaces ``notifier`` (one retained publish per group) and
``broker_sync`` (rewrite broker credentials after an enrolment or a revocation).
Settings come from their own ``FERRY_*`` variables so the server's `Settings`
stays untouched.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime

from fastapi import FastAPI, Request

from ferry.protocol.timefmt import utcnow
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


@dataclass(frozen=True)
class FleetSettings:
    """Knobs of enrolment, desired states and the rollout engine (all in seconds)."""

    rollout_tick_s: float = 5.0
    desired_state_ttl_s: int = 24 * 3600
    poll_interval_s: int = 60
    mqtt_url: str = ""
    start_rollout_engine: bool = True
    last_seen_flush_s: float = 2.0
    checkin_cache_poll_s: float = 0.5

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FleetSettings:
        """``FERRY_ROLLOUT_TICK_S``, ``FERRY_DESIRED_STATE_TTL_S``, ``FERRY_POLL_INTERVAL_S``,
        ``FERRY_MQTT_URL``, ``FERRY_START_ROLLOUT_ENGINE``, ``FERRY_LAST_SEEN_FLUSH_S``,
        ``FERRY_CHECKIN_CACHE_POLL_S``."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for item in fields(cls):
            raw = env.get("FERRY_" + item.name.upper())
            if raw:
                kind = type(getattr(cls(), item.name))
                values[item.name] = (raw.strip().lower() in {"1", "true", "yes", "on"}
                                     if kind is bool else kind(raw))
        return cls(**values)  # type: ignore[arg-type]


@dataclass
class FleetRuntime:
    """Settings plus the swappable collaborators of the fleet part."""

    settings: FleetSettings = field(default_factory=FleetSettings.from_env)
    clock: Clock = utcnow
    notifier: Notifier = field(default_factory=NullNotifier)
    broker_sync: BrokerSync = field(default_factory=NullBrokerSync)
    start_hook: StartHook = field(default_factory=NullStartHook)  # delta precompute
    delta_sizes: DeltaSizes = field(default_factory=NullDeltaSizes)  # rollout plans
    last_seen: LastSeen = field(default_factory=LastSeen)

    def now(self) -> datetime:
        return self.clock().replace(microsecond=0)


def runtime_of(app: FastAPI) -> FleetRuntime:
    runtime: FleetRuntime = app.state.fleet
    return runtime


async def get_runtime(request: Request) -> FleetRuntime:
    return runtime_of(request.app)
