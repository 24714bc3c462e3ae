"""Two server replicas on one PostgreSQL: gate evaluation never advances a wave twice.

Each test creates a scratch database with a random name and drops it afterwards;
without PostgreSQL on 127.0.0.1:5432 the tests skip and say why.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from ferry.server.audit.tables import AuditEntry
from ferry.server.checkin.cache import EpochPoller
from ferry.server.core.db import make_engine, session_scope
from ferry.server.fleet.runtime import FleetRuntime, FleetSettings
from ferry.server.rollouts.engine import lock_for_evaluation, tick
from ferry.server.rollouts.machine import parse_id
from ferry.server.webhooks.tables import EventOutbox
from tests.fleet.harness import Fleet, RecordingNotifier, build_fleet
from tests.rollouts.helpers import by_wave, commit

PG_SERVER = os.environ.get(
    "FERRY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TICKS_PER_REPLICA = 12


@pytest.fixture
def pg_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    admin = PG_SERVER.replace("postgresql+psycopg://", "postgresql://")
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        print(f"skipping: PostgreSQL does not answer at {admin}: {exc}")
        pytest.skip(f"PostgreSQL does not answer at {admin}: {exc}")
    name = f"ferry_test_{secrets.token_hex(6)}"
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_SERVER.rsplit("/", 1)[0] + f"/{name}"
        finally:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_fleet(tmp_path: Path, pg_url: str) -> Iterator[tuple[Fleet, str]]:
    harness, client = build_fleet(tmp_path / "data", database_url=pg_url)
    with client:
        harness.namespace("vision")
        harness.model("vision", "det")
        yield harness, pg_url
    harness.app.state.ctx.engine.dispose()


def _replicas(fleet: Fleet, url: str) -> list[tuple[Engine, FleetRuntime]]:
    """Two more engines and runtimes: what two other server processes would hold."""
    return [
        (
            make_engine(url),
            FleetRuntime(
                settings=FleetSettings(start_rollout_engine=False),
                clock=fleet.clock,
                notifier=RecordingNotifier(),
            ),
        )
        for _ in range(2)
    ]


def _race(replicas: list[tuple[Engine, FleetRuntime]]) -> None:
    """Both replicas tick at the same moment, repeatedly; errors surface via result()."""
    barrier = threading.Barrier(len(replicas))

    def run(engine: Engine, runtime: FleetRuntime) -> None:
        barrier.wait()
        for _ in range(TICKS_PER_REPLICA):
            tick(engine, runtime)

    with ThreadPoolExecutor(len(replicas)) as pool:
        for future in [pool.submit(run, *pair) for pair in replicas]:
            future.result()


def _transitions(engine: Engine, rollout_id: str) -> list[tuple[str, int]]:
    with session_scope(engine) as session:
        return [
            (e.action, e.details.get("wave", -1))
            for e in session.exec(
                select(AuditEntry).where(AuditEntry.target == rollout_id).order_by(AuditEntry.id)
            ).all()
        ]


def test_two_replicas_advance_each_wave_exactly_once(pg_fleet: tuple[Fleet, str]) -> None:
    fleet, url = pg_fleet
    agents = fleet.devices(16)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[25, 50, 100])
    waves = by_wave(rollout, agents)
    replicas = _replicas(fleet, url)
    try:
        commit(fleet, waves[0], version, rollout["id"])
        _race(replicas)
        assert fleet.show(rollout["id"])["wave"] == 2, "wave 2 devices are still pending"
        commit(fleet, waves[1] + waves[2], version, rollout["id"])
        _race(replicas)
        assert fleet.show(rollout["id"])["state"] == "completed"
        assert _transitions(replicas[0][0], rollout["id"]) == [
            ("rollout.create", -1),
            ("rollout.running", 1),
            ("rollout.running", 2),
            ("rollout.running", 3),
            ("rollout.completed", 3),
        ]
        with session_scope(replicas[0][0]) as session:
            events = [
                e.payload["wave"]
                for e in session.exec(select(EventOutbox)).all()
                if e.payload.get("rollout_id") == rollout["id"]
            ]
        assert events == [0, 1, 2, 3, 3], "public wave numbers: 0 before the first opens"
        announced = sum(len(rt.notifier.calls) for _, rt in replicas)  # type: ignore[attr-defined]
        assert announced == 3, "wave 2, wave 3 and completion: one announcement each"
    finally:
        for engine, _ in replicas:
            engine.dispose()


def test_a_rollout_locked_by_one_replica_is_skipped_by_the_other(
    pg_fleet: tuple[Fleet, str],
) -> None:
    fleet, url = pg_fleet
    fleet.devices(2)
    rollout = fleet.rollout(version=str(fleet.version()), waves=[100])
    pk = parse_id(rollout["id"])
    assert pk is not None
    (first, _), (second, _) = replicas = _replicas(fleet, url)
    try:
        with Session(first) as holder, Session(second) as other:
            assert lock_for_evaluation(holder, pk) is not None
            assert lock_for_evaluation(other, pk) is None
            holder.rollback()
            assert lock_for_evaluation(other, pk) is not None
            other.rollback()
    finally:
        for engine, _ in replicas:
            engine.dispose()


def test_a_revocation_on_one_replica_reaches_the_others_check_in_cache(
    pg_fleet: tuple[Fleet, str], tmp_path: Path
) -> None:
    fleet, url = pg_fleet
    (agent,) = fleet.devices(1)
    cache = fleet.app.state.checkin_cache
    poller = EpochPoller(cache, fleet.app.state.ctx.read_engine)
    poller.check()
    assert fleet.desired(agent) == fleet.desired(agent)  # now cached on replica A
    settings = fleet.app.state.ctx.settings  # replica B shares keys and the admin token
    shutil.copytree(settings.key_dir, tmp_path / "b" / "keys")
    shutil.copy(settings.admin_token_path, tmp_path / "b" / "admin-token")
    replica_b, client_b = build_fleet(tmp_path / "b", database_url=url)
    try:
        with client_b:
            r = client_b.post(f"/api/v1/devices/{agent.device_id}/revoke", headers=replica_b.admin)
            assert r.status_code == 200, r.text
        assert poller.check() is True
        r = fleet.client.get("/api/v1/device/desired-state", headers=agent.headers)
        assert r.status_code == 401
    finally:
        replica_b.app.state.ctx.engine.dispose()
