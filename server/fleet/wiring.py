"""How the fleet part plugs into the app: the device authenticator, the runtime, the engine task.

`create_app` calls `install` once and `start_engine` / `stop_engine` around its
lifespan; everything else of the fleet part hangs off ``app.state.fleet``.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from ferry.protocol.endpoints import DEVICE_TOKEN_PREFIX
from ferry.server.api.deps import AppContext
from ferry.server.fleet.credentials import authenticate_device
from ferry.server.fleet.runtime import FleetRuntime, runtime_of
from ferry.server.rollouts.engine import RolloutTicker


def install(app: FastAPI, ctx: AppContext, runtime: FleetRuntime | None = None) -> FleetRuntime:
    """Accept ``frd_`` credentials and attach the fleet runtime to the app."""
    ctx.authenticators[DEVICE_TOKEN_PREFIX] = authenticate_device
    app.state.fleet = runtime or FleetRuntime()
    return app.state.fleet  # type: ignore[no-any-return]


def start_engine(app: FastAPI) -> tuple[RolloutTicker, asyncio.Task[None]] | None:
    """Start the gate-evaluation loop unless ``FERRY_START_ROLLOUT_ENGINE`` is off."""
    runtime = runtime_of(app)
    if not runtime.settings.start_rollout_engine:
        return None
    ticker = RolloutTicker(app.state.ctx.engine, runtime)
    return ticker, asyncio.create_task(ticker.run())


async def stop_engine(started: tuple[RolloutTicker, asyncio.Task[None]] | None) -> None:
    if started is not None:
        ticker, task = started
        ticker.stop()
        await task
