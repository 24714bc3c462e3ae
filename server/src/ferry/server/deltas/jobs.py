"""Deltas in the running server: background builds for the route and rollout precompute.

The request path never builds: `GET /deltas/{from}/{to}` answers from the cache
and, on a miss, asks `DeltaJobs.request` for a background build, so the device
falls back to the full file at once and the next device gets the delta. When a
rollout starts, `rollout_started` plans the pairs its devices will ask for (one
GROUP BY over what they run, not one query per device) and queues them too.

Builds go through ``DeltaBuilder.get`` (a spawn-context process pool); a
semaphore of ``workers`` slots keeps at most that many in the pool, so the
pool's queue never grows and shutdown only waits for the builds already running.
A build that fails is logged and counted; nothing here can fail a request or a rollout.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import Enum

import anyio
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from ferry.server.core.blobs import BlobStore
from ferry.server.core.observability import Metrics
from ferry.server.deltas import DeltaBuilder, DeltaOffer
from ferry.server.fleet.tables import DeviceSlot
from ferry.server.registry.tables import ModelVersion
from ferry.server.rollouts.tables import Rollout, RolloutDevice

log = logging.getLogger("ferry.server.deltas")
MAX_QUEUED_BUILDS = 256  # pairs waiting for a build slot; more are dropped (and asked again later)


class Lookup(Enum):
    """What the cache says about a pair, without building anything."""

    UNKNOWN_BLOB = "unknown_blob"
    NOT_READY = "not_ready"
    NOT_WORTH_IT = "not_worth_it"
    READY = "ready"


@dataclass(frozen=True)
class Found:
    outcome: Lookup
    offer: DeltaOffer | None = None


@dataclass(frozen=True)
class Pair:
    """One file path present in an installed version and in the rollout's target."""

    path: str
    from_sha256: str
    to_sha256: str


class DeltaJobs:
    """The app's delta builder plus the background builds queued on it."""

    def __init__(
        self,
        builder: DeltaBuilder,
        blobs: BlobStore,
        engine: Engine,
        metrics: Metrics,
        workers: int,
    ) -> None:
        self.builder = builder
        self.blobs = blobs
        self.engine = engine
        self.metrics = metrics
        self._slots = asyncio.Semaphore(workers)
        self._loop = asyncio.get_running_loop()
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._planning: set[asyncio.Task[None]] = set()

    # --- the route's side -------------------------------------------------------------

    def lookup(self, from_sha256: str, to_sha256: str) -> Found:
        """Cache state of a pair (size checks and a small record read: run it off the event loop)."""
        if not (self.blobs.exists(from_sha256) and self.blobs.exists(to_sha256)):
            return Found(Lookup.UNKNOWN_BLOB)
        record = self.builder.cached(from_sha256, to_sha256)
        if record is None:
            return Found(Lookup.NOT_READY)
        offer = self.builder.offer(record)
        return Found(Lookup.READY, offer) if offer else Found(Lookup.NOT_WORTH_IT)

    def building(self, from_sha256: str, to_sha256: str) -> bool:
        """Whether this replica has the pair queued or building now (any thread: a read)."""
        return (from_sha256, to_sha256) in self._tasks

    def delta_size(self, from_sha256: str, to_sha256: str) -> int | None:
        """`DeltaSizes` for rollout plans: the ready delta's size, else None — and a missing
        pair is queued for a build, so planning again shows it (any thread; never raises)."""
        try:
            found = self.lookup(from_sha256, to_sha256)
            if found.outcome is Lookup.NOT_READY:
                self._loop.call_soon_threadsafe(self.request, from_sha256, to_sha256)
        except Exception:  # a plan must not fail for want of a delta
            log.exception(
                "delta size lookup failed", extra={"fields": {"from": from_sha256, "to": to_sha256}}
            )
            return None
        return found.offer.record.delta_size if found.offer is not None else None

    def request(self, from_sha256: str, to_sha256: str) -> None:
        """Queue a background build of the pair (event-loop thread only; idempotent)."""
        key = (from_sha256, to_sha256)
        if key in self._tasks:
            return
        if len(self._tasks) >= MAX_QUEUED_BUILDS:
            self.metrics.delta_builds.labels("dropped").inc()
            log.warning(
                "delta build queue full; dropped",
                extra={"fields": {"from": from_sha256, "to": to_sha256}},
            )
            return
        task = asyncio.create_task(self._build(from_sha256, to_sha256))
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    async def _build(self, from_sha256: str, to_sha256: str) -> None:
        fields = {"from": from_sha256, "to": to_sha256}
        async with self._slots:
            try:
                offer = await self.builder.get(from_sha256, to_sha256)
            except Exception:  # a bad pair must never take the server down
                self.metrics.delta_builds.labels("failed").inc()
                log.exception("delta build failed", extra={"fields": fields})
                return
        outcome = "offered" if offer is not None else "not_worth_it"
        self.metrics.delta_builds.labels(outcome).inc()
        log.info("delta built", extra={"fields": {**fields, "outcome": outcome}})

    async def wait_idle(self) -> None:
        """Until every queued plan and build has finished (for tests and scripts)."""
        while self._planning or self._tasks:
            await asyncio.gather(*self._planning, *self._tasks.values(), return_exceptions=True)

    # --- the rollout's side ---------------------------------------------------------------

    def rollout_started(self, rollout_pk: int) -> None:
        """The rollout hook: plan and queue its deltas (any thread; never raises)."""
        try:
            self._loop.call_soon_threadsafe(self._spawn_plan, rollout_pk)
        except RuntimeError:  # the loop is closing: the server is shutting down
            log.info("delta precompute skipped: shutting down")

    def _spawn_plan(self, rollout_pk: int) -> None:
        task = asyncio.create_task(self._precompute(rollout_pk))
        self._planning.add(task)
        task.add_done_callback(self._planning.discard)

    async def _precompute(self, rollout_pk: int) -> None:
        try:
            pairs = await anyio.to_thread.run_sync(rollout_pairs, self.engine, rollout_pk)
        except Exception:
            log.exception("delta precompute failed", extra={"fields": {"rollout": rollout_pk}})
            return
        for pair in pairs:
            self.request(pair.from_sha256, pair.to_sha256)
        log.info(
            "delta precompute queued",
            extra={"fields": {"rollout": rollout_pk, "pairs": len(pairs)}},
        )

    async def close(self) -> None:
        """Drop queued work, let running builds finish, stop the pool."""
        pending = [*self._planning, *self._tasks.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await anyio.to_thread.run_sync(self.builder.close)


def rollout_pairs(engine: Engine, rollout_pk: int) -> list[Pair]:
    """(old file, new file) pairs for every version the rollout's devices run now."""
    with Session(engine) as session:
        rollout = session.get(Rollout, rollout_pk)
        if rollout is None:
            return []
        target_version = rollout.version
        installed = session.exec(
            select(DeviceSlot.installed_version)
            .join(RolloutDevice, col(RolloutDevice.device_id) == col(DeviceSlot.device_id))
            .where(
                RolloutDevice.rollout_id == rollout_pk,
                DeviceSlot.slot == rollout.slot,
                DeviceSlot.model == rollout.model,
                col(DeviceSlot.installed_version).is_not(None),
                DeviceSlot.installed_version != target_version,
            )
            .group_by(col(DeviceSlot.installed_version))
        ).all()
        wanted = sorted({v for v in installed if v is not None} | {target_version})
        rows = session.exec(
            select(ModelVersion).where(
                ModelVersion.model_id == rollout.model_id, col(ModelVersion.version).in_(wanted)
            )
        ).all()
        files = {row.version: {f["path"]: f["sha256"] for f in row.files} for row in rows}
    target = files.pop(target_version, {})
    return sorted(
        {
            Pair(path, old[path], sha)
            for old in files.values()
            for path, sha in target.items()
            if path in old and old[path] != sha
        },
        key=lambda p: (p.path, p.from_sha256),
    )
