"""Database engine, sessions and programmatic Alembic migrations.

SQLite is the zero-set-up default, in WAL mode so readers never wait for writers.
SQLite allows one writer at a time, and its busy handler is no queue: with dozens
of threads polling for the write lock, the holder was seen stalled for the whole
30 s busy timeout (`make demo`, 200 devices checking in at once). So writers in
one process take a *writer gate* (a Python lock, FIFO enough and free of polling)
before ``BEGIN IMMEDIATE`` and leave it at commit or rollback; SQLite's busy
timeout then only arbitrates between processes. A writer that waits longer than
a second logs what the holder is doing; one that cannot get the gate within the
busy timeout raises `DatabaseBusyError` (503 with ``Retry-After``), never a 500.
Read-only work uses a second engine with deferred transactions and no gate. On
PostgreSQL both are the same engine and row locks do the serialising.
"""

from __future__ import annotations

import fcntl
import logging
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool
from sqlmodel import Session, create_engine

from ferry.server.core import epoch
from ferry.server.core.errors import DatabaseBusyError

log = logging.getLogger("ferry.server.core.db")

SQLITE_BUSY_TIMEOUT_S = 30
SLOW_WRITER_WAIT_S = 1.0
_HOLDS_GATE = "ferry_holds_writer_gate"
# Sync routes run on anyio's 40 worker threads; pools smaller than that open and close
# an overflow connection per request under load (measured: ~5 % of check-in CPU).
POOL_SIZE = 24
POOL_OVERFLOW = 16


def make_engine(database_url: str, *, immediate: bool = True) -> Engine:
    """Create an engine; on SQLite: WAL, foreign keys, and (for writers) immediate begins."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(
            url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW
        )
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    if immediate:
        gate = writer_gate(url.database or ":memory:")
        event.listen(engine, "begin", gate.begin)
        event.listen(engine, "commit", gate.end)
        event.listen(engine, "rollback", gate.end)
        event.listen(engine.pool, "checkin", gate.on_checkin)
    else:
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def make_read_engine(database_url: str, write_engine: Engine) -> Engine:
    """The engine for read-only work: deferred transactions on SQLite, else the same engine."""
    if write_engine.dialect.name != "sqlite":
        return write_engine
    return make_engine(database_url, immediate=False)


def _sqlite_on_connect(dbapi_conn: Any, _: Any) -> None:
    # Let SQLAlchemy, not pysqlite, decide where transactions begin.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cur.close()


class WriterGate:
    """One write transaction at a time per SQLite file in this process (see the module doc)."""

    def __init__(self, database: str, timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> None:
        self.database = database
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._holder: tuple[int, float] | None = None  # (thread ident, monotonic start)

    def begin(self, conn: Any) -> None:
        """``begin`` event: take the gate, then ``BEGIN IMMEDIATE``."""
        self._acquire()
        conn.info[_HOLDS_GATE] = True
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self.end(conn)
            raise

    def end(self, conn: Any) -> None:
        """``commit``/``rollback`` event: leave the gate (the COMMIT itself follows at once)."""
        if conn.info.pop(_HOLDS_GATE, False):
            self._release()

    def on_checkin(self, _dbapi_conn: Any, record: Any) -> None:
        """A connection back in the pool never keeps the gate (a transaction that vanished)."""
        if record.info.pop(_HOLDS_GATE, False):
            self._release()

    def _acquire(self) -> None:
        waited_from = time.monotonic()
        if self._lock.acquire(timeout=SLOW_WRITER_WAIT_S):
            self._holder = (threading.get_ident(), time.monotonic())
            return
        log.warning(
            "waiting for the SQLite write lock",
            extra={
                "fields": {
                    "database": self.database,
                    "waited_s": SLOW_WRITER_WAIT_S,
                    "holder": self.describe_holder(),
                }
            },
        )
        if not self._lock.acquire(timeout=max(0.0, self.timeout_s - SLOW_WRITER_WAIT_S)):
            raise DatabaseBusyError(
                f"the database stayed busy for {self.timeout_s:g}s; retry shortly",
                {"holder": self.describe_holder()},
                headers={"Retry-After": "2"},
            )
        self._holder = (threading.get_ident(), time.monotonic())
        log.warning(
            "got the SQLite write lock late",
            extra={
                "fields": {
                    "database": self.database,
                    "waited_s": round(time.monotonic() - waited_from, 3),
                }
            },
        )

    def _release(self) -> None:
        self._holder = None
        self._lock.release()

    def describe_holder(self) -> str:
        """Which thread holds the gate, for how long, and where its code is now."""
        holder = self._holder
        if holder is None:
            return "nobody (just released)"
        ident, since = holder
        frame = sys._current_frames().get(ident)
        names = {t.ident: t.name for t in threading.enumerate()}
        where = ""
        if frame is not None:
            ours = [f for f in traceback.extract_stack(frame) if _is_ours(f.filename)]
            where = " <- ".join(
                f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})"
                for f in reversed(ours[-4:])
            )
        return f"thread {names.get(ident, ident)} for {time.monotonic() - since:.1f}s" + (
            f" in {where}" if where else ""
        )


_LIBRARIES = (sysconfig.get_paths()["stdlib"], "site-packages", "<frozen")


def _is_ours(filename: str) -> bool:
    """Project code, not the standard library's or a dependency's (for naming a holder)."""
    return not any(part in filename for part in _LIBRARIES)


_GATES: dict[str, WriterGate] = {}
_GATES_LOCK = threading.Lock()


def writer_gate(database: str) -> WriterGate:
    """The gate of one SQLite file (engines of several apps on one file share it)."""
    with _GATES_LOCK:
        return _GATES.setdefault(database, WriterGate(database))


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(database_url: str) -> Config:
    """Alembic config pointing at the migrations shipped inside the package."""
    pkg = resources.files("ferry.server") / "migrations"
    cfg = Config(str(pkg / "alembic.ini"))
    cfg.set_main_option("script_location", str(pkg))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


STARTUP_LOCK_KEY = 0x66657272  # "ferr": one advisory-lock id for the first-start set-up


@contextmanager
def startup_lock(database_url: str, lock_dir: Path) -> Iterator[None]:
    """One replica at a time migrates and does the first-start set-up; the others wait.

    PostgreSQL: a session advisory lock, so replicas on different hosts serialise
    (and a crashed holder's lock dies with its connection). SQLite: an ``flock`` on
    a file beside the data, since every process on one SQLite file shares a host.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": STARTUP_LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": STARTUP_LOCK_KEY})
        finally:
            engine.dispose()
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / ".startup.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def migrate(database_url: str) -> None:
    """``alembic upgrade head``, run from code so an installed wheel needs no CLI.

    A migration writes through Alembic, not through sessions: when it applied any
    revision, bump the fleet epoch so running replicas drop what they cached from the
    old schema or data (`ferry.server.core.epoch`).
    """
    before = _revisions(database_url)
    command.upgrade(alembic_config(database_url), "head")
    if _revisions(database_url) != before:
        engine = create_engine(make_url(database_url), poolclass=NullPool)
        try:
            with engine.begin() as connection:
                epoch.bump(connection)
        finally:
            engine.dispose()


def _revisions(database_url: str) -> tuple[str, ...]:
    """The revisions the database is at (empty before the first migration)."""
    engine = create_engine(make_url(database_url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return tuple(sorted(MigrationContext.configure(connection).get_current_heads()))
    finally:
        engine.dispose()
