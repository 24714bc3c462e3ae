"""Fixtures: an app on a temporary data directory, tokens per role, upload helpers,
and a scratch PostgreSQL database (created and dropped per test, skipped when absent)."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ferry.server.app import create_app, prepare
from ferry.server.core.settings import Settings

PG_ADMIN_URL = os.environ.get(
    "FERRY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
API = "/api/v1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "print_admin_token": False,
        "start_webhook_worker": False,
    }
    base.update(overrides)
    return Settings(**base)


@dataclass
class Harness:
    """A TestClient plus helpers that keep the tests short."""

    app: FastAPI
    client: TestClient
    settings: Settings
    admin: dict[str, str]

    def token(
        self, role: str, namespaces: list[str] | None = None, name: str | None = None
    ) -> dict[str, str]:
        body = {
            "name": name or f"{role}-{secrets.token_hex(3)}",
            "role": role,
            "namespaces": namespaces or ["*"],
        }
        r = self.client.post(f"{API}/tokens", json=body, headers=self.admin)
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}

    def namespace(self, name: str = "vision", **extra: Any) -> None:
        r = self.client.post(f"{API}/namespaces", json={"name": name, **extra}, headers=self.admin)
        assert r.status_code == 201, r.text

    def model(self, ns: str = "vision", name: str = "resnet") -> None:
        r = self.client.post(
            f"{API}/models", json={"namespace": ns, "name": name}, headers=self.admin
        )
        assert r.status_code in (200, 201), r.text

    def upload(self, data: bytes, headers: dict[str, str] | None = None) -> str:
        sha = hashlib.sha256(data).hexdigest()
        r = self.client.put(f"{API}/blobs/{sha}", content=data, headers=headers or self.admin)
        assert r.status_code in (200, 201), r.text
        return sha

    def register(
        self,
        data: bytes | None = None,
        ns: str = "vision",
        name: str = "resnet",
        headers: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        tags: list[str] | None = None,
        expect: int = 201,
    ) -> dict[str, Any]:
        data = data if data is not None else secrets.token_bytes(64)
        sha = self.upload(data, headers)
        body = version_body(
            [{"path": "model.onnx", "sha256": sha, "size": len(data)}], metrics=metrics, tags=tags
        )
        r = self.client.post(
            f"{API}/models/{ns}/{name}/versions", json=body, headers=headers or self.admin
        )
        assert r.status_code == expect, r.text
        return r.json()


def version_body(
    files: list[dict[str, Any]],
    metrics: dict[str, float] | None = None,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "files": files,
        "format": "onnx",
        "flavor": "onnxruntime",
        "signature": {
            "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 2]}],
        },
        "hardware": ["x86_64"],
        "metadata": {
            "created_by": "ci@team",
            "run_id": "run-1",
            "git_commit": "abc123",
            "metrics": metrics or {"accuracy": 0.9},
        },
        "tags": tags or [],
    }


def admin_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.admin_token_path.read_text().strip()}"}


@pytest.fixture(scope="session")
def prepared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory after first start (migrated SQLite, keys, admin token), made once
    per session; each harness gets its own copy, which is much faster than migrating."""
    settings = make_settings(tmp_path_factory.mktemp("template") / "data")
    prepare(settings).dispose()
    return settings.data_dir


@pytest.fixture
def harness_factory(tmp_path: Path, prepared_data_dir: Path) -> Iterator[Callable[..., Harness]]:
    clients: list[TestClient] = []

    def build(**overrides: Any) -> Harness:
        data_dir = tmp_path / f"data{len(clients)}"
        if "database_url" not in overrides:
            shutil.copytree(prepared_data_dir, data_dir)
        settings = make_settings(data_dir, **overrides)
        app = create_app(settings)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return Harness(app, client, settings, admin_headers(settings))

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def h(harness_factory: Callable[..., Harness]) -> Harness:
    """A ready harness with namespace ``vision`` and model ``vision/resnet``."""
    harness = harness_factory()
    harness.namespace()
    harness.model()
    return harness


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A scratch PostgreSQL database, dropped afterwards; skip when none answers."""
    psycopg = pytest.importorskip("psycopg")
    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432: {exc}")
    name = f"ferry_test_{secrets.token_hex(6)}"
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class ServerProcess:
    """A real ``ferry server`` process on a free port (python -m ferry.cli.server_cmds)."""

    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        import subprocess
        import sys

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        cmd = [
            sys.executable,
            "-m",
            "ferry.cli.server_cmds",
            "server",
            "--data-dir",
            str(data_dir),
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
        ]
        if database_url:
            cmd += ["--database-url", database_url]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        env["FERRY_MQTT_PORT"] = str(free_port())  # the embedded broker, never a fixed port
        self.log = (data_dir.parent / f"server-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()
        self.admin = admin_headers_from(data_dir / "admin-token")

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer within {timeout}s: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def admin_headers_from(path: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {path.read_text().strip()}"}


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "srv")
    yield server
    server.stop()


@pytest.fixture
def live_server(server_process: ServerProcess) -> tuple[str, dict[str, str]]:
    return server_process.base, server_process.admin
