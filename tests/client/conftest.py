"""A real `ferry server` process on a free port, shared by the client and CLI tests.

Each test gets its own namespace (and its own config file), so tests never depend
on each other's state; the server's data directory is a fresh tmp dir per session.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ferry.client import FerryClient, MemoryTrustStore
from tests.client.helpers import FERRY, Server, free_port

_counter = itertools.count(1)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll /healthz until the server answers; fail with its log if it dies."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ferry server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"ferry server did not become ready:\n{log.read_text()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("server-data")
    log = data_dir.parent / "server.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(
            [str(FERRY), "server", "--data-dir", str(data_dir), "--port", str(port)],
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log)
        token = (data_dir / "admin-token").read_text().strip()
        yield Server(url, token, data_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def admin(server: Server) -> Iterator[FerryClient]:
    """An admin client whose root-key pins live in memory only."""
    with FerryClient(server.url, server.admin_token, trust=MemoryTrustStore()) as client:
        yield client


@pytest.fixture
def namespace(admin: FerryClient) -> str:
    """A fresh namespace for this test."""
    name = f"ns{os.getpid()}-{next(_counter)}"
    admin.create_namespace(name)
    return name


@pytest.fixture
def model(admin: FerryClient, namespace: str) -> tuple[str, str]:
    admin.create_model(namespace, "resnet", description="test model")
    return namespace, "resnet"


@pytest.fixture
def bundle(tmp_path: Path) -> list[Path]:
    """Two files: a 3 MiB one (several upload chunks) and a small one."""
    src = tmp_path / "bundle"
    src.mkdir()
    weights = src / "model.onnx"
    weights.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    labels = src / "labels.txt"
    labels.write_text("cat\ndog\n")
    return [weights, labels]
