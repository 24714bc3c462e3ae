"""How the fleet part plugs into the app: the device authenticator, the runtime, its tasks.

`create_app` calls `install` once and `start_tasks` / `stop_tasks` around its
lifespan (the rollout engine and the ``last_seen_at`` writer); everything else of
the fleet part hangs off ``app.state.fleet``, except the check-in cache
(``app.state.checkin_cache``), which belongs to the app's database engine.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from ferry.protocol.endpoints import DEVICE_TOKEN_PREFIX
from ferry.server.api.deps import AppContext
from ferry.server.fleet.checkin_cache import CheckinCache, EpochPoller, track_changes
from ferry.server.fleet.credentials import authenticate_device
from ferry.server.fleet.last_seen import LastSeenFlusher
from ferry.server.fleet.runtime import FleetRuntime, runtime_of
from ferry.server.rollouts.engine import RolloutTicker

Loop = RolloutTicker | LastSeenFlusher | EpochPoller
Started = list[tuple[Loop, asyncio.Task[None]]]


def install(app: FastAPI, ctx: AppContext, runtime: FleetRuntime | None = None) -> FleetRuntime:
    """Accept ``frd_`` credentials, attach the fleet runtime and the check-in cache."""
    ctx.authenticators[DEVICE_TOKEN_PREFIX] = authenticate_device
    app.state.checkin_cache = CheckinCache()
    track_changes(ctx.engine, app.state.checkin_cache)
    app.state.fleet = runtime or FleetRuntime()
    return app.state.fleet  # type: ignore[no-any-return]


def start_tasks(app: FastAPI) -> Started:
    """Start the ``last_seen_at`` writer, the epoch poller (other replicas' changes), and
    the gate-evaluation loop unless ``FERRY_START_ROLLOUT_ENGINE`` is off."""
    runtime = runtime_of(app)
    ctx = app.state.ctx
    engine = ctx.engine
    loops: list[Loop] = [
        LastSeenFlusher(runtime.last_seen, engine, runtime.settings.last_seen_flush_s),
        EpochPoller(app.state.checkin_cache, ctx.read_engine,
                    runtime.settings.checkin_cache_poll_s)]
    if runtime.settings.start_rollout_engine:
        loops.append(RolloutTicker(engine, runtime))
    return [(loop, asyncio.create_task(loop.run())) for loop in loops]


async def stop_tasks(started: Started) -> None:
    for loop, _ in started:
        loop.stop()
    await asyncio.gather(*(task for _, task in started))
