"""`Lease`: a named duty that one process at a time holds, among every process sharing the database.

Background work that must run once per replica set (the rollout engine, webhook
delivery) or once per broker login (the MQTT session) is held
through a lease; every other worker and replica keeps trying, and takes over
when the holder dies.

* PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection
  the holder keeps open. The lock goes when that session ends, so a ``kill -9``
  of the holder frees it at once (the server sees the socket close); a holder
  that loses its connection learns it at its next `still_held` and stops its
  duty. TCP keepalives bound how long a silently dead holder's session lingers.
* SQLite: an exclusive ``flock`` on ``<lock_dir>/<name>.lock``. One SQLite file is
  only ever shared by processes of one machine, and the kernel drops the lock when
  the holder dies.

No clock is involved, so the hosts' clocks need not agree.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

log = logging.getLogger("ferry.server.leases")

# psycopg / libpq: notice a silently dead peer within about 20 s.
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def lease_key(name: str) -> int:
    """The 64-bit signed advisory-lock id of a lease name (stable across processes and hosts)."""
    digest = hashlib.sha256(f"ferry-lease:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Lease:
    """Try to hold ``name``; `still_held` checks it on every turn; `release` lets go."""

    def __init__(self, database_url: str, name: str, lock_dir: Path) -> None:
        self.name = name
        self._url = make_url(database_url)
        self._sqlite = self._url.get_backend_name() == "sqlite"
        self._lock_path = lock_dir / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.lock"
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._conn is not None

    def try_acquire(self) -> bool:
        """True if this process now holds the lease (or held it already); never blocks."""
        if self.held:
            return True
        return self._flock() if self._sqlite else self._advisory_lock()

    def still_held(self) -> bool:
        """False once the lease is lost (its database session ended); then it is released."""
        if self._conn is None:
            return self._fd is not None
        try:
            self._conn.execute(text("SELECT 1")).scalar_one()
        except SQLAlchemyError:
            log.warning(
                "lost a lease with its database session", extra={"fields": {"lease": self.name}}
            )
            self.release()
            return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        if self._conn is not None:
            try:
                self._conn.close()  # ending the session drops the advisory lock
            except SQLAlchemyError:
                pass
            self._conn = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _flock(self) -> bool:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _advisory_lock(self) -> bool:
        if self._engine is None:
            args = _KEEPALIVES if self._url.get_driver_name() in ("psycopg", "psycopg2") else {}
            self._engine = create_engine(self._url, poolclass=NullPool, connect_args=args)
        try:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError:
            return False
        try:
            got = conn.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": lease_key(self.name)}
            ).scalar_one()  # a session lock: it outlives any transaction
        except SQLAlchemyError:
            conn.close()
            return False
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True


Stop = Callable[[], Awaitable[None]]


@dataclass(eq=False)
class Duty:
    """Work that runs while ``lease`` is held: ``start`` begins it and returns how to stop it.

    ``needs``: a duty held only alongside another (the replica-set duties run in the
    worker that holds the broker session, so the rollout engine's notices have a
    connection to go out on).
    """

    lease: Lease
    start: Callable[[], Awaitable[Stop]]
    needs: Duty | None = None
    stop: Stop | None = field(default=None, init=False)

    @property
    def running(self) -> bool:
        return self.stop is not None


class Leader:
    """Keeps trying the leases of its duties every ``poll_s``; runs those it holds.

    `step` is one pass (the lifespan runs the first one before serving, so a single
    process starts exactly as it did without leases); `start` repeats it until `close`.
    """

    def __init__(
        self,
        duties: list[Duty],
        poll_s: float,
        on_change: Callable[[str, bool], object] = lambda _name, _held: None,
    ) -> None:
        self.duties = duties
        self.poll_s = poll_s
        self.on_change = on_change
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def step(self) -> None:
        for duty in self.duties:
            try:
                await self._step(duty)
            except Exception:  # a database hiccup must never end the loop
                log.exception("lease step failed", extra={"fields": {"lease": duty.lease.name}})

    async def _step(self, duty: Duty) -> None:
        needs_ok = duty.needs is None or duty.needs.running
        if duty.running:
            if not needs_ok or not await anyio.to_thread.run_sync(duty.lease.still_held):
                await self._halt(duty)
            return
        if not needs_ok or not await anyio.to_thread.run_sync(duty.lease.try_acquire):
            return
        try:
            duty.stop = await duty.start()
        except Exception:
            log.exception(
                "a leased duty did not start", extra={"fields": {"lease": duty.lease.name}}
            )
            duty.lease.release()
            return
        log.info("took a lease", extra={"fields": {"lease": duty.lease.name, "pid": os.getpid()}})
        self.on_change(duty.lease.name, True)

    async def _halt(self, duty: Duty) -> None:
        stop, duty.stop = duty.stop, None
        try:
            if stop is not None:
                await stop()
        finally:
            duty.lease.release()
            self.on_change(duty.lease.name, False)

    def start(self) -> None:
        """Repeat `step` every ``poll_s`` in a task until `close`."""
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.poll_s)
            except TimeoutError:
                await self.step()

    async def close(self) -> None:
        """Stop trying, stop every running duty (dependants first), let go of every lease."""
        self._stop.set()
        if self._task is not None:
            await self._task
        for duty in reversed(self.duties):
            if duty.running:
                await self._halt(duty)
            duty.lease.release()
