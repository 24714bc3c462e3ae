"""`ferry server` on first contact: where it listens on every start, and a start that
cannot work is one line with the fix — no traceback, no half-started server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.client.helpers import FERRY, free_port
from tests.server.conftest import pg_url  # noqa: F401  (scratch PostgreSQL database)
from tests.support.workers import workers_of


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    return {**env, "FERRY_MQTT_PORT": str(free_port()), **extra}


def run_until_banner(data_dir: Path, log: Path, port: int) -> str:
    """Start the server, wait for its banner, stop it; everything it printed."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(FERRY), "server", "--data-dir", str(data_dir), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
    try:
        deadline = time.monotonic() + 60
        while "admin token:" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    return log.read_text()


def refused(*args: str, **env: str) -> str:
    result = subprocess.run(
        [str(FERRY), "server", *args],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_every_start_says_where_it_listens_and_keeps_its_data(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    first = run_until_banner(data, tmp_path / "first.log", port)
    assert "created admin token" in first
    banner = first[first.index("ferry server: HTTP on") :].splitlines()[:4]
    assert banner[0] == (
        f"ferry server: HTTP on http://127.0.0.1:{port} (API "
        f"http://127.0.0.1:{port}/api/v1, health http://127.0.0.1:{port}/healthz)"
    )
    assert banner[1].startswith("  MQTT: mqtt://127.0.0.1:")
    assert banner[2] == f"  data: {data} (database sqlite:///{data}/ferry.db)"
    assert banner[3] == f"  admin token: {data}/admin-token"
    again = run_until_banner(data, tmp_path / "again.log", port)
    assert "created admin token" not in again and f"  admin token: {data}/admin-token" in again


def test_a_taken_port_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused("--data-dir", str(tmp_path / "data"), "--port", str(port))
    assert line == (
        f"ferry server: port {port} on 127.0.0.1 is already in use (another ferry "
        "server?) — stop what holds it or choose another with --port / FERRY_PORT"
    )


def test_a_data_dir_it_cannot_write_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    line = refused("--data-dir", str(tmp_path / "file" / "data"), "--port", str(free_port()))
    assert line.startswith(f"ferry server: cannot write the data directory {tmp_path}/file/data")
    assert "--data-dir / FERRY_DATA_DIR" in line


def test_an_unreachable_database_is_one_line_without_its_password(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://ferry:s3cret@127.0.0.1:{free_port()}/ferry"
    line = refused(
        "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), "--database-url", url
    )
    assert line.startswith(
        "ferry server: cannot use the database postgresql+psycopg://ferry:***@127.0.0.1:"
    )
    assert "s3cret" not in line and "FERRY_DATABASE_URL" in line


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "FERRY_DELTA_MAX_FRACTION",
            "lots",
            "FERRY_DELTA_MAX_FRACTION='lots' is not a valid float",
        ),
        ("FERRY_MQTT_PORT", "abc", "FERRY_MQTT_PORT='abc' is not a valid int"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    line = refused(
        "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), **{variable: value}
    )
    assert expected in line


def test_several_workers_on_sqlite_are_refused_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    line = refused("--data-dir", str(tmp_path / "data"), "--port", str(port), "--workers", "2")
    assert line.startswith("ferry server: --workers 2 needs PostgreSQL")
    assert "FERRY_DATABASE_URL" in line
    assert not (tmp_path / "data" / "ferry.db").exists()  # refused before anything started
    line = refused("--data-dir", str(tmp_path / "data"), "--port", str(port), FERRY_WORKERS="3")
    assert line.startswith("ferry server: --workers 3 needs PostgreSQL")


def test_several_workers_on_an_unreachable_database_are_one_line(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://ferry:s3cret@127.0.0.1:{free_port()}/ferry"
    line = refused(
        "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), "--workers", "2",
        "--database-url", url,
    )  # fmt: skip
    assert line.startswith("ferry server: cannot use the database postgresql+psycopg://ferry:***@")
    assert "s3cret" not in line


@pytest.mark.postgres
def test_several_workers_print_the_start_once_and_stop_together_on_ctrl_c(
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    """Banner and first admin token once (not once per worker); Ctrl-C (SIGINT to the
    terminal's process group) ends the supervisor and every worker, exit code 0."""
    log, port = tmp_path / "server.log", free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(FERRY), "server", "--data-dir", str(tmp_path / "data"), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(FERRY_WORKERS="2", FERRY_DATABASE_URL=pg_url, FERRY_MQTT_ENABLED="false"),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "admin token:" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        children = workers_of(proc.pid)
        while len(children) < 2:  # the supervisor starts its workers after the banner
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
            children = workers_of(proc.pid)
        workers = sorted(children)
        # Spawned is not serving: under load a worker's imports take many seconds.
        while not _healthy(f"http://127.0.0.1:{port}/healthz"):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
    text = log.read_text()
    assert code == 0, text
    assert text.count("ferry server: HTTP on") == 1, text
    assert ", 2 worker processes" in text
    assert text.count("created admin token") == 1, text
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], text


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=10).status_code == 200
    except httpx.TransportError:
        return False
