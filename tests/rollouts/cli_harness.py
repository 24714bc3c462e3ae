"""A real `ferry server` process for the CLI tests, and the CLI run against it.

The server's own rollout engine ticks every 0.2 s; ``ferry(..., columns=80)`` runs a
command as a person at an 80-column terminal would see it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from ferry.cli.main import app

FERRY = Path(sys.executable).parent / "ferry"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data = tmp_path_factory.mktemp("fleet-cli") / "data"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["FERRY_ROLLOUT_TICK_S"] = "0.2"
    log = data.parent / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(FERRY), "server", "--data-dir", str(data), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url, (data / "admin-token").read_text().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def ferry(server: tuple[str, str], tmp_path: Path, *args: str, columns: int = 200) -> Result:
    env = {
        "FERRY_CONFIG": str(tmp_path / "config.toml"),
        "FERRY_SERVER": server[0],
        "FERRY_TOKEN": server[1],
        "COLUMNS": str(columns),
    }
    return CliRunner().invoke(app, list(args), env=env)


def publish(http: httpx.Client) -> None:
    """Namespace ``vision``, model ``vision/det`` and its version 1 in Production."""
    assert http.post("/api/v1/namespaces", json={"name": "vision"}).status_code == 201
    assert (
        http.post("/api/v1/models", json={"namespace": "vision", "name": "det"}).status_code == 201
    )
    add_version(http, b"weights v1")


def add_version(
    http: httpx.Client, data: bytes, hardware: list[str] | None = None, stage: str = "Production"
) -> int:
    """Register ``data`` as the next version of vision/det (one file) and promote it."""
    sha = hashlib.sha256(data).hexdigest()
    assert http.put(f"/api/v1/blobs/{sha}", content=data).status_code in (200, 201)
    body = {
        "files": [{"path": "m.onnx", "sha256": sha, "size": len(data)}],
        "format": "onnx",
        "flavor": "onnxruntime",
        "signature": {"inputs": [], "outputs": []},
        "hardware": hardware or [],
        "metadata": {"created_by": "ci", "run_id": "r", "git_commit": "c"},
    }
    r = http.post("/api/v1/models/vision/det/versions", json=body)
    assert r.status_code == 201, r.text
    number = int(r.json()["version"])
    for step in ("Staging", "Production")[: ("Staging", "Production").index(stage) + 1]:
        r = http.post(f"/api/v1/models/vision/det/versions/{number}/stage", json={"stage": step})
        assert r.status_code == 200, r.text
    return number


def enroll(
    http: httpx.Client,
    token: str,
    device_id: str,
    hardware: str = "x86_64",
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    r = http.post(
        "/api/v1/device/enroll",
        json={
            "enrollment_token": token,
            "device_id": device_id,
            "hardware": hardware,
            "tags": {"site": "lyon"} if tags is None else tags,
        },
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def send_report(url: str, device: dict[str, Any], doc: dict[str, Any]) -> None:
    """Post one status report as the device would."""
    r = httpx.post(
        f"{url}/api/v1/device/status",
        json={"reports": [doc]},
        headers={"Authorization": f"Bearer {device['credential']}"},
    )
    assert r.status_code == 200, r.text
