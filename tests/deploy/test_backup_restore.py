"""Back up a running server, wipe it, restore it: its devices still verify and update.

Real processes: `ferry server`, a real `ferry-agent`, and the `ferry admin backup` /
`ferry admin restore` commands, on SQLite and (when it answers) PostgreSQL.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ferry.cli.demo import (
    FINAL_STATES,
    AgentProcess,
    Operator,
    ServerProcess,
    _installed,
    wait_until,
)
from tests.server.conftest import pg_url  # noqa: F401  (scratch PostgreSQL database fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FERRY = [str(Path(sys.executable).parent / "ferry")]


def _ferry(*args: str, database_url: str | None) -> str:
    extra = ["--database-url", database_url] if database_url else []
    done = subprocess.run(
        [*FERRY, *args, *extra], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _roll_out(op: Operator, agent: AgentProcess, version: int) -> None:
    rollout = op.create_rollout(version, [100], max_failure_pct=50, min_success_pct=100)
    status = op.wait_rollout(
        rollout["id"], lambda s: s["rollout"]["state"] in FINAL_STATES, timeout=120
    )
    assert status["rollout"]["state"] == "completed", status
    wait_until(lambda: _installed(agent) == version, 60, f"the agent to run v{version}")


def _story(tmp_path: Path, database_url: str | None, wipe_database: Iterator[None]) -> None:
    env = {
        "FERRY_MQTT_ENABLED": "false",
        "FERRY_ROLLOUT_TICK_S": "0.3",
        **({"FERRY_DATABASE_URL": database_url} if database_url else {}),
    }
    server = ServerProcess(tmp_path / "server", env=env).start()
    admin_token = server.admin_token  # the operator's; a restore does not mint another
    op = Operator(server.url, admin_token)
    agent = AgentProcess(tmp_path / "agent", "edge-1", poll_interval_s=0.5)
    try:
        v1, v2 = op.publish_model(tmp_path / "bundles", [False, False], size=65536)
        agent.enroll(server.url, op.enrollment_token(None))
        agent.start()
        _roll_out(op, agent, v1)
        said = _ferry(
            "admin",
            "backup",
            str(tmp_path / "backup"),
            "--data-dir",
            str(server.data_dir),
            database_url=database_url,
        )  # while it runs
        assert "backed up" in said
        op.close()
        server.stop()
        shutil.rmtree(server.data_dir)
        next(wipe_database)
        said = _ferry(
            "admin",
            "restore",
            str(tmp_path / "backup"),
            "--data-dir",
            str(server.data_dir),
            database_url=database_url,
        )
        assert "restored" in said
        server.start()
        op = Operator(server.url, admin_token)
        _roll_out(op, agent, v2)  # the device verifies keyring, directive and manifest again
        assert agent.status()["slots"]["main"]["current"]["version"] == v2
    finally:
        agent.stop()
        op.close()
        server.stop()


def test_a_sqlite_server_restored_from_its_backup_keeps_updating_its_devices(
    tmp_path: Path,
) -> None:
    def nothing_more() -> Iterator[None]:
        yield None  # the SQLite file went with the data directory

    _story(tmp_path, None, nothing_more())


@pytest.mark.postgres
def test_a_postgres_server_restored_from_its_backup_keeps_updating_its_devices(
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    def drop_everything() -> Iterator[None]:
        engine = create_engine(pg_url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
        yield None

    _story(tmp_path, pg_url, drop_everything())


def test_restore_refuses_a_folder_that_is_not_a_backup(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    done = subprocess.run(
        [*FERRY, "admin", "restore", str(tmp_path / "junk"), "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and "is it a ferry backup?" in done.stderr
    assert "Traceback" not in done.stderr
