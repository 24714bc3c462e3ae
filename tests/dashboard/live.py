"""A real Ferry server process, the simulator as its fleet, and a Chromium driven by Playwright.

Debian's chromium is used as installed (``executable_path``); Playwright never downloads
a browser. The server runs with the embedded MQTT broker on a free port and a fast
rollout tick; its log file is kept so tests can prove no token reaches it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.server.conftest import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
DOC_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class LiveServer:
    """``ferry server`` as a process, plus an admin client for set-up."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "server.log"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        # The bootstrap admin token is printed once by design; these tests read its file
        # instead, so that any token in the log is a leak.
        env.update(
            FERRY_MQTT_PORT=str(free_port()),
            FERRY_ROLLOUT_TICK_S="1",
            FERRY_PRINT_ADMIN_TOKEN="false",
        )
        cmd = [
            sys.executable,
            "-m",
            "ferry.cli.server_cmds",
            "server",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
        ]
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_until(self._ready, "the server's /readyz")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited: {self.log_path.read_text(errors='replace')}")
        try:
            return httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        r = httpx.request(
            method, f"{self.base}/api/v1{path}", headers=headers, timeout=30, **kwargs
        )
        assert r.status_code < 300, (r.status_code, r.text)
        return r

    def token(self, role: str) -> str:
        body = {"name": f"{role}-{secrets.token_hex(3)}", "role": role, "namespaces": ["*"]}
        return str(self.api("POST", "/tokens", json=body).json()["token"])

    def publish(self, ns: str, name: str, metrics: dict[str, float]) -> int:
        data = secrets.token_bytes(256)
        sha = hashlib.sha256(data).hexdigest()
        self.api("PUT", f"/blobs/{sha}", content=data)
        body = {
            "files": [{"path": "model.onnx", "sha256": sha, "size": len(data)}],
            "format": "onnx",
            "flavor": "onnxruntime",
            "signature": {
                "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3]}],
                "outputs": [],
            },
            "hardware": ["x86_64"],
            "metadata": {
                "created_by": "ci@vision",
                "run_id": f"run-{secrets.token_hex(3)}",
                "git_commit": secrets.token_hex(20),
                "metrics": metrics,
                "training_data": {
                    "digest": "sha256:" + secrets.token_hex(32),
                    "version": "2026-11",
                },
            },
        }
        version = int(
            self.api("POST", f"/models/{ns}/{name}/versions", json=body).json()["version"]
        )
        for stage in ("Staging", "Production"):
            self.api(
                "POST",
                f"/models/{ns}/{name}/versions/{version}/stage",
                json={"stage": stage, "comment": f"to {stage.lower()}"},
            )
        return version


@dataclass
class Simulator:
    """``python -m ferry.cli.simulate`` as a process."""

    server: LiveServer
    enrollment_token: str
    devices: int
    fail_rate: float = 0.0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "ferry.cli.simulate",
            "--server",
            self.server.base,
            "--enrollment-token",
            self.enrollment_token,
            "--devices",
            str(self.devices),
            "--fail-rate",
            str(self.fail_rate),
            "--step-delay",
            "0.4",
            "--poll-interval",
            "2",
            "--run-for",
            "600",
            "--seed",
            "7",
        ]
        log = (self.server.data_dir.parent / "simulator.log").open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
