"""The FastAPI application factory.

`create_app` prepares the data directory (migrations, keys, keyring, audit head,
bootstrap admin token) and returns an app serving ``/healthz``, ``/metrics`` and
the API under ``/api/v1``. Other parts add their router with one line in
`API_ROUTERS`; their tables go in ``server/tables/`` and their migrations in
``server/migrations/versions/``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import APIRouter, FastAPI
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from starlette.types import Receive, Scope, Send

import ferry.server.metadata  # noqa: F401  (every table on SQLModel.metadata)
from ferry.protocol.timefmt import utcnow
from ferry.server import wiring as fleet_wiring
from ferry.server.api import system
from ferry.server.api.body_limits import BodyLimitMiddleware
from ferry.server.api.http_semantics import HeadMiddleware, method_not_allowed
from ferry.server.audit import routes as audit_routes
from ferry.server.audit import service as audit
from ferry.server.auth import routes as token_routes
from ferry.server.auth.service import ServerRole, create_token, has_any_token
from ferry.server.blobs import routes as blob_routes
from ferry.server.blobs.store import open_store
from ferry.server.checkin import routes as checkin_routes
from ferry.server.checkin.fast_compute import answer_computed_checkin
from ferry.server.checkin.fast_path import answer_from_memory
from ferry.server.checkin.fast_status import answer_status_post
from ferry.server.core.context import AppContext
from ferry.server.core.db import (
    make_engine,
    make_read_engine,
    migrate,
    session_scope,
    startup_lock,
)
from ferry.server.core.errors import install_error_handlers
from ferry.server.core.memo import Memo
from ferry.server.core.observability import Metrics, ObservabilityMiddleware, configure_logging
from ferry.server.core.periodic import Periodic
from ferry.server.core.schemas import ErrorBody
from ferry.server.core.settings import Settings
from ferry.server.dashboard import routes as dashboard
from ferry.server.dashboard.fleet_view import ONLINE_WINDOW_S
from ferry.server.dashboard.gauges import fleet_gauges
from ferry.server.deltas import DeltaBuilder
from ferry.server.deltas import routes as delta_routes
from ferry.server.deltas.jobs import DeltaJobs
from ferry.server.fleet import device_routes, enrollment_routes
from ferry.server.fleet.runtime import runtime_of
from ferry.server.registry import model_routes, namespace_routes
from ferry.server.rollouts import routes as rollout_routes
from ferry.server.rollouts import status_routes
from ferry.server.trust import routes as trust_routes
from ferry.server.trust.service import KeySource, ManifestMemo, renew_if_expiring
from ferry.server.webhooks import routes as webhook_routes
from ferry.server.webhooks.service import RetryPolicy, WebhookWorker

API_PREFIX = "/api/v1"
KEYRING_CHECK_S = 3600.0  # renewal is due a quarter of the lifetime (91 days) before expiry
API_ROUTERS: list[APIRouter] = [
    token_routes.router,
    namespace_routes.router,
    model_routes.router,
    blob_routes.router,
    trust_routes.router,
    audit_routes.router,
    webhook_routes.router,
    enrollment_routes.router,
    checkin_routes.router,
    device_routes.router,
    rollout_routes.router,
    status_routes.router,
    delta_routes.router,
]
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "bad request",
        401: "no or unknown token",
        403: "role or namespace not allowed",
        404: "not found",
        409: "conflict",
        413: "too large",
        416: "range not satisfiable",
        422: "validation error",
    }.items()
}
BOOTSTRAP_TOKEN_NAME = "bootstrap-admin"

log = logging.getLogger("ferry.server")


def prepare(settings: Settings) -> Engine:
    """Migrate the schema and create first-start state; safe to run on every start."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with startup_lock(settings.database_url, settings.data_dir):
        migrate(settings.database_url)
        engine = make_engine(settings.database_url)
        KeySource(engine, settings.key_dir).initialise(settings.keyring_expiry_days)
        with session_scope(engine) as session:
            audit.ensure_head(session)
        _bootstrap_admin(engine, settings)
    return engine


def _bootstrap_admin(engine: Engine, settings: Settings) -> None:
    """With no tokens at all, mint one admin token, print it once and save it 0600."""
    with session_scope(engine) as session:
        if has_any_token(session):
            return
        row, secret = create_token(
            session, name=BOOTSTRAP_TOKEN_NAME, role=ServerRole.ADMIN, namespaces=["*"]
        )
        audit.append(
            session,
            actor="server",
            action="token.create",
            target=f"token:{row.id}",
            details={"name": row.name, "role": row.role, "bootstrap": True},
        )
    path = settings.admin_token_path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    if settings.print_admin_token:
        print(
            f"ferry: created admin token (shown once, also saved to {path}):\n{secret}",
            file=sys.stderr,
            flush=True,
        )


def _start_deltas(app: FastAPI, ctx: AppContext) -> DeltaJobs | None:
    """The delta service and its background builds; also the rollout-start precompute hook."""
    settings = ctx.settings
    if not settings.deltas_enabled:
        return None
    builder = DeltaBuilder(
        ctx.blobs,
        settings.delta_dir,
        max_fraction=settings.delta_max_fraction,
        max_concurrent_builds=settings.delta_build_workers,
    )
    jobs = DeltaJobs(builder, ctx.blobs, ctx.engine, ctx.metrics, settings.delta_build_workers)
    app.state.deltas = jobs
    runtime_of(app).start_hook = jobs
    runtime_of(app).delta_sizes = jobs
    return jobs


def _check_store(ctx: AppContext) -> None:
    """One line at start-up: which blob store, and why it cannot serve yet (also on /readyz)."""
    problem = ctx.blobs.unavailable()
    fields = {"store": ctx.blobs.describe()}
    if problem is None:
        log.info("blob store ready", extra={"fields": fields})
    else:
        log.error(f"blob store not ready: {problem}", extra={"fields": fields})


def _renew_keyring(ctx: AppContext) -> None:
    """One renewal check; a concurrent renewal by another replica is not an error."""
    try:
        with session_scope(ctx.engine) as session:
            version = renew_if_expiring(
                session, ctx.settings.key_dir, ctx.settings.keyring_expiry_days, utcnow()
            )
            if version is not None:
                audit.append(
                    session, actor="server", action="keys.renew", target=f"keyring:{version}"
                )
    except IntegrityError:
        return
    if version is not None:
        log.info("keyring renewed", extra={"fields": {"version": version}})


class FerryApp(FastAPI):
    """FastAPI, with cached device check-ins, manifests and blob sizes answered, and new
    desired states and status batches of cached device logins taken, ahead of the
    middleware stack."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await answer_from_memory(self.state, scope, send):
            return
        if await answer_computed_checkin(self.state, scope, send):
            return
        onward = await answer_status_post(self.state, scope, receive, send)
        if onward is not None:
            await super().__call__(scope, onward, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    configure_logging()
    engine = prepare(settings)
    metrics = Metrics()
    read_engine = make_read_engine(settings.database_url, engine)
    ctx = AppContext(
        settings=settings,
        engine=engine,
        read_engine=read_engine,
        blobs=open_store(settings.blobs, settings.blob_dir),
        keys=KeySource(engine, settings.key_dir),
        metrics=metrics,
    )

    def background() -> list[fleet_wiring.Loop]:
        """The replica set's loops, run by the worker holding the ``background`` lease."""
        loops: list[fleet_wiring.Loop] = fleet_wiring.background_loops(app)
        if settings.start_webhook_worker:
            loops.append(
                WebhookWorker(
                    engine,
                    RetryPolicy(
                        settings.webhook_max_attempts,
                        settings.webhook_backoff_seconds,
                        settings.webhook_timeout_seconds,
                    ),
                    settings.webhook_poll_seconds,
                    read_engine=read_engine,
                    on_outcome=lambda o: metrics.webhook_deliveries.labels(o).inc(),
                )
            )
        return loops

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(_check_store, ctx)
        jobs = _start_deltas(app, ctx)
        fleet_tasks = fleet_wiring.start_tasks(app)
        # Every process: one check an hour, and a concurrent renewal is harmless (the
        # loser's insert conflicts and is dropped), so a lease would buy nothing.
        renewer = Periodic(lambda: _renew_keyring(ctx), KEYRING_CHECK_S, "keyring renewal")
        fleet_tasks.append((renewer, asyncio.create_task(renewer.run())))
        leader = fleet_wiring.leader(app, ctx, background, metrics.lease_changed)
        await leader.step()  # a lone process holds every lease before it serves
        leader.start()
        try:
            yield
        finally:
            await leader.close()
            await fleet_wiring.stop_tasks(fleet_tasks)
            if jobs is not None:
                await jobs.close()
            engine.dispose()
            read_engine.dispose()
            ctx.blobs.close()

    app = FerryApp(title="Ferry registry", version="1", lifespan=lifespan)
    app.state.ctx = ctx
    app.state.mqtt = None
    app.state.manifests = ManifestMemo()  # signed manifests are immutable: read once
    app.state.blob_sizes = Memo[str, int]()  # so are blobs (content-addressed)
    metrics.snapshots.sources.append(
        lambda: fleet_gauges(read_engine, runtime_of(app).now(), ONLINE_WINDOW_S)
    )
    fleet_wiring.install(app, ctx)
    install_error_handlers(app)
    app.add_exception_handler(405, method_not_allowed)
    app.add_middleware(BodyLimitMiddleware)  # inside observability: 413s are logged, counted
    app.add_middleware(HeadMiddleware)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    app.include_router(system.router)
    dashboard.mount(app)
    for router in API_ROUTERS:
        app.include_router(router, prefix=API_PREFIX, responses=ERROR_RESPONSES)
    return app
