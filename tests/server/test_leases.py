"""Leases: one holder at a time, and a dead holder's lease moves (PostgreSQL and SQLite).

The holder that dies is a real process killed with SIGKILL; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ferry.server.core.leases import Duty, Leader, Lease, lease_key
from ferry.server.core.observability import forget_dead_workers
from tests.server.conftest import pg_url  # noqa: F401  (scratch PostgreSQL database)

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ferry.server.core.leases import Lease
    lease = Lease(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
    print("held" if lease.try_acquire() else "refused", flush=True)
    time.sleep(600)
    """
)


def _holder(url: str, name: str, lock_dir: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, name, str(lock_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def _eventually(lease: Lease) -> bool:
    """The server notices a killed client's closed socket at once, but not synchronously."""
    deadline = time.monotonic() + 30
    while not lease.try_acquire():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ferry.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_one_holder_and_the_lease_moves_when_the_holder_is_killed(url: str, tmp_path: Path) -> None:
    holder, said = _holder(url, "background", tmp_path / "leases")
    try:
        assert said == "held"
        mine = Lease(url, "background", tmp_path / "leases")
        assert not mine.try_acquire()  # another process holds it
        other = Lease(url, "broker:ferry@server", tmp_path / "leases")
        assert other.try_acquire()  # another name is another lease
        other.release()
        _kill(holder)
        assert _eventually(mine)
        assert mine.still_held()
        second, said = _holder(url, "background", tmp_path / "leases")
        _kill(second)
        assert said == "refused"
        mine.release()
        assert not mine.held
        third, said = _holder(url, "background", tmp_path / "leases")
        _kill(third)
        assert said == "held"
    finally:
        if holder.poll() is None:
            _kill(holder)


def test_a_holder_whose_session_ends_learns_it_and_another_takes_over(
    pg_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    mine = Lease(pg_url, "background", tmp_path)
    assert mine.try_acquire()
    killed = _terminate_lease_sessions(pg_url)
    assert killed == 1
    assert not mine.still_held()
    assert not mine.held
    other = Lease(pg_url, "background", tmp_path)
    assert other.try_acquire()
    other.release()


def test_lease_keys_are_stable_and_distinct() -> None:
    assert lease_key("background") == lease_key("background")
    assert lease_key("background") != lease_key("broker:ferry@server")
    assert -(2**63) <= lease_key("x") < 2**63


def test_a_dependent_duty_runs_only_alongside_what_it_needs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ferry.db'}"
    events: list[str] = []

    def duty(name: str, needs: Duty | None = None) -> Duty:
        async def start() -> object:
            events.append(f"start {name}")

            async def stop() -> None:
                events.append(f"stop {name}")

            return stop

        return Duty(Lease(url, name, tmp_path / "leases"), start, needs=needs)  # type: ignore[arg-type]

    async def scenario() -> None:
        taken = Lease(url, "primary", tmp_path / "leases")
        assert taken.try_acquire()  # another process holds the primary lease
        primary = duty("primary")
        leader = Leader([primary, duty("background", needs=primary)], 3600)
        await leader.step()
        assert events == []  # without the primary, the background is not even tried
        taken.release()
        await leader.step()
        assert events == ["start primary", "start background"]
        await leader.close()
        assert events[2:] == ["stop background", "stop primary"]
        assert Lease(url, "background", tmp_path / "leases").try_acquire()

    asyncio.run(scenario())


def test_a_leader_that_loses_its_session_stops_the_duty_and_another_starts_it(
    pg_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    events: list[str] = []

    def leader(name: str) -> Leader:
        async def start() -> object:
            events.append(f"{name} starts")

            async def stop() -> None:
                events.append(f"{name} stops")

            return stop

        return Leader([Duty(Lease(pg_url, "background", tmp_path), start)], 3600)  # type: ignore[arg-type]

    async def scenario() -> None:
        first, second = leader("first"), leader("second")
        await first.step()
        await second.step()
        assert events == ["first starts"]
        _terminate_lease_sessions(pg_url)
        await first.step()  # learns that its session is gone
        await second.step()
        assert events == ["first starts", "first stops", "second starts"]
        await first.step()
        assert events[-1] == "second starts"  # the first does not take it back
        await second.close()
        await first.step()
        assert events[-2:] == ["second stops", "first starts"]
        await first.close()

    asyncio.run(scenario())


def _terminate_lease_sessions(url: str) -> int:
    admin = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # what a database restart or a network cut does
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l "
                "JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND d.datname = :db"
            ),
            {"db": url.rsplit("/", 1)[1]},
        ).scalar_one()
    admin.dispose()
    return int(killed)


def test_a_killed_worker_not_yet_reaped_holds_no_lease_in_the_metrics(tmp_path: Path) -> None:
    """A worker killed with SIGKILL is a zombie until the supervisor reaps it (seconds
    under load); its live gauges, such as ``ferry_lease_held``, are dropped at once,
    so /metrics never shows the dead worker and its successor both holding a lease."""
    zombie = subprocess.Popen(["sleep", "0"])
    running = subprocess.Popen(["sleep", "60"])
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.05)
        for pid in (zombie.pid, running.pid, 2**22 + 1):  # the last: no such process
            (tmp_path / f"gauge_liveall_{pid}.db").write_bytes(b"")
        forget_dead_workers(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"gauge_liveall_{running.pid}.db"]
    finally:
        running.kill()
        running.wait()
        zombie.wait()
