"""The delta-build workers die with the server, even when it is killed with SIGKILL (issue 14).

A real ``ferry server`` process builds a delta (a cache miss on ``GET /deltas``
queues one), which starts its spawn-context worker pool and the multiprocessing
resource tracker. After a ``kill -9`` of the server, none of its children may
survive: each one left behind held ~63 MB.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ServerProcess

pytestmark = [pytest.mark.e2e]
API = "/api/v1"


def children(pid: int) -> set[int]:
    """Living (not zombie) processes whose parent is ``pid`` (Linux /proc)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            status = _status(int(entry.name))
            if status.get("PPid") == str(pid) and not status.get("State", "").startswith("Z"):
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    status = _status(pid)
    return bool(status) and not status.get("State", "").startswith("Z")


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_kill_9_of_the_server_leaves_no_delta_worker_or_resource_tracker(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "srv")
    try:
        old, new = os.urandom(200_000), os.urandom(200_000)
        digests = []
        for data in (old, new):
            digest = hashlib.sha256(data).hexdigest()
            put = httpx.put(
                f"{server.base}{API}/blobs/{digest}", content=data, headers=server.admin, timeout=30
            )
            assert put.status_code in (200, 201), put.text
            digests.append(digest)
        miss = httpx.get(
            f"{server.base}{API}/deltas/{digests[0]}/{digests[1]}", headers=server.admin, timeout=30
        )
        assert miss.status_code == 404 and "delta_not_ready" in miss.text, miss.text
        pid = server.proc.pid
        wait_for(lambda: len(children(pid)) >= 2, 30, "the worker and the resource tracker")
        spawned = children(pid)
    finally:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        server.log.close()

    wait_for(
        lambda: not any(alive(child) for child in spawned),
        10,
        f"the server's children {sorted(spawned)} to exit after its kill -9",
    )


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid``."""
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        below = set().union(*(children(p) for p in frontier)) - found
        found |= below
        frontier = below
    return found


def test_kill_9_mid_build_leaves_no_chunk_worker_either(tmp_path: Path) -> None:
    """A large build runs its own chunk-worker pool: those are the server's grandchildren."""
    server = ServerProcess(tmp_path / "srv")
    try:
        digests = [
            _upload(server, os.urandom(10 << 20)),  # 10 chunks of 1 MiB: a pool of chunk workers
            _upload(server, os.urandom(10 << 20)),
        ]
        miss = httpx.get(
            f"{server.base}{API}/deltas/{digests[0]}/{digests[1]}",
            headers=server.admin,
            timeout=30,
        )
        assert miss.status_code == 404, miss.text
        pid = server.proc.pid
        wait_for(
            lambda: len(descendants(pid) - children(pid)) >= 1, 60, "the build's chunk workers"
        )
        spawned = descendants(pid)
    finally:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        server.log.close()

    wait_for(
        lambda: not any(alive(p) for p in spawned),
        10,
        f"the server's processes {sorted(spawned)} to exit after its kill -9",
    )


def _upload(server: ServerProcess, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    put = httpx.put(
        f"{server.base}{API}/blobs/{digest}", content=data, headers=server.admin, timeout=60
    )
    assert put.status_code in (200, 201), put.text
    return digest
