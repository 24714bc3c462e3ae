"""Database engine, sessions and programmatic Alembic migrations.

SQLite is the zero-set-up default, in WAL mode so readers never wait for writers.
To make concurrent writers safe without retry loops, the write engine starts every
transaction with ``BEGIN IMMEDIATE``: writers queue on the busy timeout instead of
failing when a read lock cannot be upgraded. Read-only requests use a second engine
with ordinary deferred transactions. On PostgreSQL both are the same engine and
row locks do the serialising (see `ferry.server.audit` and `ferry.server.registry`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

import ferry.server.tables  # noqa: F401  (registers every table on the metadata)

SQLITE_BUSY_TIMEOUT_S = 30
# Sync routes run on anyio's 40 worker threads; pools smaller than that open and close
# an overflow connection per request under load (measured: ~5 % of check-in CPU).
POOL_SIZE = 24
POOL_OVERFLOW = 16


def make_engine(database_url: str, *, immediate: bool = True) -> Engine:
    """Create an engine; on SQLite: WAL, foreign keys, and (for writers) immediate begins."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE,
                             max_overflow=POOL_OVERFLOW)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
        pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_begin_immediate if immediate else _sqlite_begin)
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


def _sqlite_begin_immediate(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


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


def migrate(database_url: str) -> None:
    """``alembic upgrade head``, run from code so an installed wheel needs no CLI."""
    command.upgrade(alembic_config(database_url), "head")
