"""How the concepts plug into each other and into the app: the composition root's helpers.

`subscribe_domain_events` connects the facts lower concepts publish to the
concepts above them that react. `create_app` calls `install` once and, around its
lifespan, `start_tasks` / `stop_tasks` (what every process runs: the ``last_seen_at``
writer and the epoch poller, each a `ferry.server.core.periodic.Periodic`) and
`leader` (what runs once: see below). Everything else of the fleet part hangs off
``app.state.fleet``, except the check-in cache (``app.state.checkin_cache``), which
belongs to the app's database engine.

Leased duties (`ferry.server.core.leases`), for ``ferry server --workers N`` and
replicas alike:

    broker:<login>   the MQTT session of this broker login (client id = login, so one
                     connection per login): the embedded broker if any, the status
                     subscriber, the notifier, the broker password-file writer
    background       once per replica set, in a worker that holds its broker login:
                     the rollout engine tick and webhook delivery
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from fastapi import FastAPI

from ferry.protocol.endpoints import DEVICE_TOKEN_PREFIX
from ferry.server.checkin.cache import (
    CheckinCache,
    EpochPoller,
    cached_device_authenticator,
    track_changes,
)
from ferry.server.core import domain_events, epoch
from ferry.server.core.context import AppContext
from ferry.server.core.leases import Duty, Leader, Lease, Stop
from ferry.server.core.periodic import Periodic
from ferry.server.fleet.credentials import authenticate_device
from ferry.server.fleet.events import DeviceRevoked
from ferry.server.fleet.hooks import NullBrokerSync, NullNotifier
from ferry.server.fleet.runtime import FleetRuntime, runtime_of
from ferry.server.mqtt import MqttMetrics, MqttService, start_mqtt, stop_mqtt
from ferry.server.registry.events import AliasMoved
from ferry.server.rollouts import bindings, service
from ferry.server.rollouts.engine import tick

Started = list[tuple[Periodic, asyncio.Task[None]]]
BACKGROUND_LEASE = "background"
PASSWORDS_POLL_S = 1.0


class Loop(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...


class BrokerSessionError(Exception):
    """The worker that took the broker-session lease could not start the session."""


class HeldElsewhere:
    """``app.state.mqtt`` of a worker whose broker session another worker holds."""

    def ready(self) -> bool:
        return True


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
    if ctx.settings.workers > 1 and ctx.settings.mqtt.enabled:
        fleet.broker_url = ctx.settings.mqtt.device_url  # whichever worker holds the session
    return fleet


def start_tasks(app: FastAPI) -> Started:
    """Start what every process runs: the ``last_seen_at`` writer and the epoch poller
    (other workers' and replicas' changes)."""
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
    return [(loop, asyncio.create_task(loop.run())) for loop in loops]


async def stop_tasks(started: Started) -> None:
    for loop, _ in started:
        loop.stop()
    await asyncio.gather(*(task for _, task in started))


def leader(
    app: FastAPI,
    ctx: AppContext,
    background: Callable[[], list[Loop]],
    on_change: Callable[[str, bool], object] = lambda _name, _held: None,
) -> Leader:
    """The leased duties of this process: the broker session of its login, then the
    replica set's ``background`` loops (built afresh each time the lease is taken)."""
    settings = ctx.settings
    lock_dir = settings.data_dir / "leases"
    metrics = MqttMetrics(ctx.metrics.registry) if settings.mqtt.enabled else None
    if settings.workers > 1 and settings.mqtt.enabled:
        app.state.mqtt = HeldElsewhere()

    async def start_broker_session() -> Stop:
        runtime = runtime_of(app)
        service = await start_mqtt(app, ctx, metrics=metrics)
        if service is None and settings.workers > 1 and settings.mqtt.enabled:
            # e.g. the embedded broker's port still held by a dying worker's Mosquitto: let
            # go, and this or another worker tries again at the next poll
            raise BrokerSessionError("the broker session did not start; retrying")
        app.state.mqtt = service
        watch = _password_watch(ctx, service) if settings.workers > 1 else None
        stop_watch = await start_loops(watch) if watch else None

        async def stop() -> None:
            if stop_watch is not None:
                await stop_watch()
            app.state.mqtt = HeldElsewhere() if settings.workers > 1 else None
            runtime.notifier, runtime.broker_sync = NullNotifier(), NullBrokerSync()
            await stop_mqtt(service)

        return stop

    async def start_background() -> Stop:
        return await start_loops(background())

    broker = Duty(
        Lease(settings.database_url, f"broker:{settings.mqtt.username}", lock_dir),
        start_broker_session,
    )
    duties = [
        broker,
        Duty(
            Lease(settings.database_url, BACKGROUND_LEASE, lock_dir), start_background, needs=broker
        ),
    ]
    return Leader(duties, settings.lease_poll_s, on_change)


def background_loops(app: FastAPI) -> list[Loop]:
    """The replica set's gate-evaluation loop unless ``FERRY_START_ROLLOUT_ENGINE`` is off."""
    runtime, ctx = runtime_of(app), app.state.ctx
    settings = runtime.settings
    if not settings.start_rollout_engine:
        return []
    decided = ctx.metrics.gate_decisions
    return [
        Periodic(
            lambda: tick(ctx.engine, runtime, lambda d: decided.labels(d).inc()),
            settings.rollout_tick_s,
            "rollout tick",
        )
    ]


async def start_loops(loops: list[Loop]) -> Stop:
    tasks = [asyncio.create_task(loop.run()) for loop in loops]

    async def stop() -> None:
        for loop in loops:
            loop.stop()
        await asyncio.gather(*tasks)

    return stop


def _password_watch(ctx: AppContext, service: MqttService | None) -> list[Loop] | None:
    """With several workers an enrolment may land on any of them, but only the session's
    holder knows the server's broker password: it rewrites the broker's password file
    when the device logins changed. It looks when the fleet epoch moved (enrolment and
    revocation bump it, and so do rollouts: hence the comparison before rewriting)."""
    if service is None or not service.settings.password_file:
        return None
    seen: dict[str, object] = {}

    def check() -> None:
        with ctx.read_engine.connect() as connection:
            value = int(connection.execute(epoch.READ).scalar_one())
        if seen.get("epoch") == value:
            return
        logins = hash(tuple(service.directory.logins()))
        if seen.get("logins") != logins:  # the first look too: one enrolled as this began
            service.credentials_changed()
        seen.update(epoch=value, logins=logins)

    loop = Periodic(check, PASSWORDS_POLL_S, "watching enrolments for the broker password file")
    return [loop]
