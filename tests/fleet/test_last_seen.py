"""Steady-state check-ins only read; ``last_seen_at`` is written in batches."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from ferry.protocol.timefmt import format_time, parse_time
from tests.fleet.harness import API, Agent, Fleet


def _last_seen(fleet: Fleet, agent: Agent) -> str | None:
    r = fleet.client.get(f"{API}/devices/{agent.device_id}", headers=fleet.admin)
    assert r.status_code == 200, r.text
    value: str | None = r.json()["last_seen_at"]
    return value


def _flush(fleet: Fleet) -> int:
    return fleet.runtime.last_seen.flush(fleet.app.state.ctx.engine)


def test_an_unchanged_check_in_is_served_while_another_writer_holds_the_database(
    fleet: Fleet,
) -> None:
    (agent,) = fleet.devices(1)
    first = fleet.desired(agent)  # signs and stores the document
    database = fleet.app.state.ctx.settings.database_url.removeprefix("sqlite:///")
    writer = sqlite3.connect(database, timeout=0, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # SQLite's one write lock, held
    try:
        assert fleet.desired(agent) == first
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_the_time_seen_is_written_by_the_flush_and_never_moves_back(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    fleet.desired(agent)
    fleet.clock.advance(600)
    fleet.desired(agent)  # unchanged: noted, not yet written
    later = format_time(fleet.clock.now)
    assert _flush(fleet) == 1
    assert _last_seen(fleet, agent) == later
    fleet.runtime.last_seen.touch(agent.device_id, parse_time("2026-01-01T00:00:00Z"))
    assert _flush(fleet) == 1
    assert _last_seen(fleet, agent) == later
    assert _flush(fleet) == 0


def test_a_changed_desired_state_still_takes_the_locked_path(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    assert fleet.desired(agent)["signed"]["sequence"] == 1
    version = fleet.version()
    fleet.rollout(version=str(version), waves=[100])
    fleet.clock.advance(60)
    assert fleet.desired(agent)["signed"]["sequence"] == 2
    assert _last_seen(fleet, agent) == format_time(fleet.clock.now)  # written at once


def test_a_failed_flush_keeps_the_notes_for_the_next_one(fleet: Fleet, tmp_path: Path) -> None:
    (agent,) = fleet.devices(1)
    notes = fleet.runtime.last_seen
    notes.touch(agent.device_id, parse_time("2027-01-01T03:00:00Z"))
    missing = create_engine(f"sqlite:///{tmp_path / 'absent' / 'ferry.db'}")
    with pytest.raises(OperationalError):
        notes.flush(missing)
    notes.touch(agent.device_id, parse_time("2027-01-01T02:00:00Z"))  # older: the kept note wins
    assert _flush(fleet) == 1
    assert _last_seen(fleet, agent) == "2027-01-01T03:00:00Z"


def test_a_status_report_notes_the_device_seen_and_the_flush_writes_it(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    fleet.desired(agent)
    _flush(fleet)
    before = _last_seen(fleet, agent)
    fleet.clock.advance(300)
    fleet.report(agent, "idle", to_version=None)
    assert _last_seen(fleet, agent) == before  # noted, not written per report
    assert _flush(fleet) == 1
    assert _last_seen(fleet, agent) == format_time(fleet.clock.now)


def test_without_a_note_taker_ingest_writes_last_seen_in_one_statement(fleet: Fleet) -> None:
    from ferry.protocol.documents import StatusReport
    from ferry.server.checkin.ingest import ingest_batch
    from ferry.server.core.db import session_scope
    from tests.fleet.harness import report_doc

    agents = fleet.devices(2)
    fleet.clock.advance(300)
    at = format_time(fleet.clock.now)
    reports = [
        StatusReport.from_dict(report_doc(a.device_id, "idle", to_version=None, at=at))
        for a in agents
    ]
    with session_scope(fleet.app.state.ctx.engine) as session:
        result = ingest_batch(session, reports, fleet.clock.now)
    assert len(result.accepted) == 2
    assert {_last_seen(fleet, a) for a in agents} == {at}
