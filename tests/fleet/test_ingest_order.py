"""The server's view converges on the device's: reports ordered by the device's own sequence,
and no lost update when replicas and transports interleave (PostgreSQL, two engines)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from ferry.protocol.documents import StatusReport
from ferry.server.checkin.ingest import ingest_batch, ingest_reports
from ferry.server.core.db import make_engine, session_scope
from ferry.server.fleet.tables import DeviceReport, DeviceSlot
from ferry.server.rollouts.tables import RolloutDevice
from tests.fleet.harness import API, Agent, Fleet, build_fleet, report_doc
from tests.rollouts.test_replicas_pg import pg_url  # noqa: F401  (the scratch-database fixture)

SEED = 20261203
STEPS = ("downloading", "verifying", "staged", "switching", "probing", "committed")


def _report(
    agent: Agent,
    state: str,
    seq: int,
    version: int,
    rollout_id: str | None = None,
    at: str = "2026-11-25T03:00:00Z",
) -> StatusReport:
    doc = report_doc(agent.device_id, state, to_version=version, at=at, rollout_id=rollout_id)
    return StatusReport.from_dict({**doc, "report_seq": seq})


def _slot(fleet: Fleet, agent: Agent) -> dict[str, Any]:
    shown = fleet.client.get(f"{API}/devices/{agent.device_id}", headers=fleet.admin).json()
    return dict(shown["slots"][0])


def test_a_late_probing_report_does_not_undo_a_committed_slot(fleet: Fleet) -> None:
    """103 of 120 slots showed `probing` with a phantom staged version: order by report_seq."""
    (agent,) = fleet.devices(1)
    early = [_report(agent, s, seq, 1) for seq, s in enumerate(STEPS[:-1], start=1)]
    committed = _report(agent, "committed", len(STEPS), 1)
    engine = fleet.app.state.ctx.engine
    with session_scope(engine) as session:  # the terminal report over HTTP first
        ingest_reports(session, agent.device_id, [committed], fleet.clock.now)
    with session_scope(engine) as session:  # then the MQTT batch, later
        ingest_batch(session, list(reversed(early)), fleet.clock.now)
    slot = _slot(fleet, agent)
    assert (slot["state"], slot["installed_version"], slot["staged_version"]) == (
        "committed",
        1,
        None,
    )


def test_reports_without_a_sequence_keep_the_further_state_within_one_second(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    committed = StatusReport.from_dict(
        report_doc(agent.device_id, "committed", to_version=2, at="2026-11-25T03:00:05Z")
    )
    probing = StatusReport.from_dict(
        report_doc(agent.device_id, "probing", to_version=2, at="2026-11-25T03:00:05Z")
    )
    with session_scope(fleet.app.state.ctx.engine) as session:
        ingest_batch(session, [committed, probing], fleet.clock.now)
    assert _slot(fleet, agent)["state"] == "committed"


def test_a_lower_sequence_is_stale_even_with_a_later_clock(fleet: Fleet) -> None:
    """The device's counter, not its clock, orders its reports (a clock step backwards)."""
    (agent,) = fleet.devices(1)
    newer = _report(agent, "committed", 9, 3, at="2026-11-25T03:00:00Z")
    older = _report(agent, "staged", 8, 3, at="2026-11-25T04:00:00Z")
    with session_scope(fleet.app.state.ctx.engine) as session:
        ingest_batch(session, [newer, older], fleet.clock.now)
    assert _slot(fleet, agent)["state"] == "committed"


@pytest.fixture
def pg_fleet(tmp_path: Path, pg_url: str) -> Iterator[tuple[Fleet, str]]:  # noqa: F811
    harness, client = build_fleet(tmp_path / "data", database_url=pg_url)
    with client:
        harness.namespace("vision")
        harness.model("vision", "det")
        yield harness, pg_url
    harness.app.state.ctx.engine.dispose()


@pytest.mark.postgres
def test_two_replicas_and_two_transports_never_lose_a_terminal_report(
    pg_fleet: tuple[Fleet, str],
) -> None:
    """Each device's steps go over 'MQTT' to replica A in batches and its `committed` over
    'HTTP' to replica B, at once and in random order; every device must end committed."""
    fleet, url = pg_fleet
    rng = random.Random(SEED)
    agents = fleet.devices(40)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[100])
    rid = rollout["id"]
    replica_a, replica_b = make_engine(url), make_engine(url)
    try:
        for round_ in range(3):
            target = version if round_ == 0 else fleet.version()
            rid = rid if round_ == 0 else fleet.rollout(version=str(target), waves=[100])["id"]
            steps = {
                a.device_id: [
                    _report(a, s, 10 * round_ + i, target, rid)
                    for i, s in enumerate(STEPS[:-1], start=1)
                ]
                for a in agents
            }
            finals = [
                _report(a, "committed", 10 * round_ + len(STEPS), target, rid) for a in agents
            ]
            batches = [r for a in agents for r in steps[a.device_id]]
            rng.shuffle(batches)
            rng.shuffle(finals)
            barrier = threading.Barrier(2)

            def mqtt(
                reports: list[StatusReport] = batches, barrier: threading.Barrier = barrier
            ) -> None:
                barrier.wait()
                for start in range(0, len(reports), 25):
                    with session_scope(replica_a) as session:
                        ingest_batch(session, reports[start : start + 25], fleet.clock.now)

            def http(
                reports: list[StatusReport] = finals, barrier: threading.Barrier = barrier
            ) -> None:
                barrier.wait()
                for report in reports:
                    with session_scope(replica_b) as session:
                        ingest_reports(session, report.device_id, [report], fleet.clock.now)

            with ThreadPoolExecutor(2) as pool:
                for future in [pool.submit(mqtt), pool.submit(http)]:
                    future.result()
            with session_scope(replica_a) as session:
                members = session.exec(
                    select(RolloutDevice).where(RolloutDevice.rollout_id == int(rid.split("-")[1]))
                ).all()
                slots = session.exec(select(DeviceSlot)).all()
            assert {m.state for m in members} == {"committed"}, f"round {round_}"
            assert {(s.state, s.installed_version) for s in slots} == {("committed", target)}
            fleet.tick()  # the gate completes the rollout, so the next one may start
    finally:
        replica_a.dispose()
        replica_b.dispose()


@pytest.mark.postgres
def test_a_report_is_stored_column_for_column_on_postgresql(pg_fleet: tuple[Fleet, str]) -> None:
    """The array INSERT (one array per column) keeps types: NULL-only columns, JSON, text ids."""
    fleet, _url = pg_fleet
    (agent,) = fleet.devices(1)
    doc = report_doc(
        agent.device_id, "failed", to_version=2, at="2026-11-25T03:00:00Z", rollout_id="r-7"
    )
    report = StatusReport.from_dict(
        {**doc, "from_version": 1, "error_code": "E_HASH", "timings": {"download_ms": 1500}}
    )
    with session_scope(fleet.app.state.ctx.engine) as session:
        ingest_batch(session, [report], fleet.clock.now)
        stored = session.exec(
            select(DeviceReport).where(DeviceReport.report_id == report.report_id)
        ).one()
    assert (stored.rollout_id, stored.from_version, stored.to_version) == ("r-7", 1, 2)
    assert (stored.error_code, stored.sequence, stored.timings) == (
        "E_HASH",
        None,
        {"download_ms": 1500},
    )
