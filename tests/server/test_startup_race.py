"""Replicas starting at once on an empty database: one runs the migrations and the
first-start set-up, the others wait for it; every one comes up, and the set-up happens once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.server.conftest import free_port

REPLICAS = 3


def _start(data_dir: Path, database_url: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "FERRY_MQTT_ENABLED": "false",
        "FERRY_PRINT_ADMIN_TOKEN": "false",
    }
    cmd = [
        sys.executable,
        "-m",
        "ferry.cli.server_cmds",
        "server",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--database-url",
        database_url,
    ]
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env), port


def _all_healthy(procs: list[tuple[subprocess.Popen[bytes], int]], logs: list[Path]) -> None:
    deadline = time.monotonic() + 90
    waiting = {port for _, port in procs}
    while waiting and time.monotonic() < deadline:
        for (proc, port), log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                raise AssertionError(
                    f"replica on {port} exited {proc.returncode}:\n{log.read_text()[-3000:]}"
                )
            if port in waiting:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success:
                        waiting.discard(port)
                except httpx.HTTPError:
                    pass
        time.sleep(0.2)
    assert not waiting, f"replicas {sorted(waiting)} never became healthy"


def _race(tmp_path: Path, database_url: str) -> None:
    data_dir = tmp_path / "shared-data"  # the compose stack shares one volume
    logs = [tmp_path / f"replica-{i}.log" for i in range(REPLICAS)]
    procs = [_start(data_dir, database_url, log) for log in logs]
    try:
        _all_healthy(procs, logs)
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            proc.wait(timeout=20)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        admins = conn.execute(text("SELECT count(*) FROM api_token WHERE role = 'admin'"))
        assert admins.scalar_one() == 1
        assert conn.execute(text("SELECT count(*) FROM keyring_version")).scalar_one() == 1
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_replicas_starting_at_once_on_an_empty_postgres_all_come_up(
    tmp_path: Path, pg_url: str
) -> None:
    _race(tmp_path, pg_url)


@pytest.mark.slow
def test_replicas_starting_at_once_on_an_empty_sqlite_file_all_come_up(tmp_path: Path) -> None:
    _race(tmp_path, f"sqlite:///{tmp_path / 'ferry.db'}")
