"""How the concepts plug into each other and into the app: the composition root's helpers.

`subscribe_domain_events` connects the facts lower concepts publish to the
concepts above them that react. `create_app` calls `install` once and `start_tasks` / `stop_tasks` around its
lifespan (the rollout engine, the ``last_seen_at`` writer and the epoch poller, each a
`ferry.server.core.periodic.Periodic`); everything else of
the fleet part hangs off ``app.state.fleet``, except the check-in cache
(``app.state.checkin_cache``), which belongs to the app's database engine.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from ferry.protocol.endpoints import DEVICE_TOKEN_PREFIX
from ferry.server.checkin.cache import (
    CheckinCache,
    EpochPoller,
    cached_device_authenticator,
    track_changes,
)
from ferry.server.core import domain_events
from ferry.server.core.context import AppContext
from ferry.server.core.periodic import Periodic
from ferry.server.fleet.credentials import authenticate_device
from ferry.server.fleet.events import DeviceRevoked
from ferry.server.fleet.runtime import FleetRuntime, runtime_of
from ferry.server.registry.events import AliasMoved
from ferry.server.rollouts import bindings, service
from ferry.server.rollouts.engine import tick

Started = list[tuple[Periodic, asyncio.Task[None]]]


def subscribe_domain_events() -> None:
    """Rollouts react to the registry's and the fleet's facts (idempotent)."""
    domain_events.subscribe(AliasMoved, bindings.on_alias_moved)
    domain_events.subscribe(DeviceRevoked, service.on_device_revoked)


def install(app: FastAPI, ctx: AppContext, runtime: FleetRuntime | None = None) -> FleetRuntime:
    """Accept ``frd_`` credentials, attach the fleet runtime and the check-in cache."""
    subscribe_domain_events()
    cache = app.state.checkin_cache = CheckinCache()
    fleet = runtime or FleetRuntime(settings=ctx.settings.fleet)
    ctx.authenticators[DEVICE_TOKEN_PREFIX] = cached_device_authenticator(
        cache,
        authenticate_device,
        enabled=lambda: runtime_of(app).settings.checkin_cache_poll_s > 0,
    )
    track_changes(ctx.engine, cache)
    app.state.fleet = fleet
    return fleet


def start_tasks(app: FastAPI) -> Started:
    """Start the ``last_seen_at`` writer, the epoch poller (other replicas' changes), and
    the gate-evaluation loop unless ``FERRY_START_ROLLOUT_ENGINE`` is off."""
    runtime, ctx, cache = runtime_of(app), app.state.ctx, app.state.checkin_cache
    settings = runtime.settings
    loops = [
        Periodic(
            lambda: runtime.last_seen.flush(ctx.engine),
            settings.last_seen_flush_s,
            "writing last_seen_at",
            final_step=True,
        )
    ]
    if settings.checkin_cache_poll_s > 0:
        loops.append(
            Periodic(
                EpochPoller(cache, ctx.read_engine).check,
                settings.checkin_cache_poll_s,
                "reading fleet_epoch",
                on_error=cache.invalidate,
            )
        )
    if settings.start_rollout_engine:
        decided = ctx.metrics.gate_decisions
        loops.append(
            Periodic(
                lambda: tick(ctx.engine, runtime, lambda d: decided.labels(d).inc()),
                settings.rollout_tick_s,
                "rollout tick",
            )
        )
    return [(loop, asyncio.create_task(loop.run())) for loop in loops]


async def stop_tasks(started: Started) -> None:
    for loop, _ in started:
        loop.stop()
    await asyncio.gather(*(task for _, task in started))
