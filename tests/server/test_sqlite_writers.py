"""SQLite under many writers: the writer gate keeps every write short and every error a 503.

`make demo` died because 40 threads polling SQLite's busy handler left the
holder of the write lock stalled for the whole 30 s busy timeout; these tests
hammer one file from many threads and check that nothing fails, that a stuck
holder is named in the log, and that a waiter gives up with a 503-shaped error.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from ferry.server.core.db import WriterGate, make_engine, session_scope
from ferry.server.core.errors import DatabaseBusyError

WRITERS = 48
WRITES_EACH = 25


def _engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with session_scope(engine) as session:
        session.connection().execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        session.connection().execute(text("INSERT INTO counter VALUES (0)"))
    return engine


def test_many_threads_writing_at_once_all_succeed_and_none_is_lost(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    errors: list[BaseException] = []

    def writer() -> None:
        for _ in range(WRITES_EACH):
            try:
                with session_scope(engine) as session:
                    conn = session.connection()
                    n = conn.execute(text("SELECT n FROM counter")).scalar_one()
                    time.sleep(0.0005)  # a read-modify-write that would lose updates unserialised
                    conn.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with session_scope(engine) as session:
        assert (
            session.connection().execute(text("SELECT n FROM counter")).scalar_one()
            == WRITERS * WRITES_EACH
        )


def test_a_failed_transaction_releases_the_gate(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        session.connection().execute(text("UPDATE counter SET n = 5"))
        raise RuntimeError("boom")
    done = threading.Event()

    def write() -> None:
        with session_scope(engine) as session:
            session.connection().execute(text("UPDATE counter SET n = 7"))
        done.set()

    threading.Thread(target=write, daemon=True).start()
    assert done.wait(5), "the gate stayed taken after a rollback"


def test_a_stuck_holder_is_named_and_the_waiter_gets_a_busy_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = WriterGate("test.db", timeout_s=1.5)
    gate._acquire()
    holder = threading.current_thread().name
    caught: list[DatabaseBusyError] = []

    def waiter() -> None:
        try:
            gate._acquire()
        except DatabaseBusyError as exc:
            caught.append(exc)

    with caplog.at_level(logging.WARNING, logger="ferry.server.core.db"):
        thread = threading.Thread(target=waiter)
        thread.start()
        thread.join(10)
    assert len(caught) == 1
    busy = caught[0]
    assert busy.status == 503 and busy.code == "database_busy"
    assert busy.headers == {"Retry-After": "2"}
    assert holder in str(busy.details)
    waits = [r for r in caplog.records if r.getMessage() == "waiting for the SQLite write lock"]
    assert waits and holder in waits[0].__dict__["fields"]["holder"]
    assert "test_sqlite_writers.py" in waits[0].__dict__["fields"]["holder"]
