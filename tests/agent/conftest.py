"""Fixtures: a repository simulator, an enrolled device in a tmp dir, agent processes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ferry.agent.config import AgentConfig, load_config
from ferry.agent.daemon import Agent
from ferry.agent.enroll import enroll
from ferry.agent.installer import Slot
from tests.support.device_repository import DeviceRepository

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo() -> Iterator[DeviceRepository]:
    simulator = DeviceRepository().start()
    yield simulator
    simulator.close()


def write_config(
    folder: Path, extra: str = "", *, device_id: str = "dev-0001", interval_s: float = 0.3
) -> Path:
    """A test config: short poll interval and backoff caps so the suite stays fast."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agent.toml"
    path.write_text(
        f'state_dir = "state"\n'
        f'hardware = "x86_64"\n'
        f'device_id = "{device_id}"\n'
        f'[tags]\nregion = "eu"\n'
        f"[poll]\ninterval_s = {interval_s}\nbackoff_min_s = 0.1\nbackoff_max_s = 0.5\n"
        f"[report]\nretry_s = 0.2\n"
        f"[mqtt]\npublish_timeout_s = 2\n"
        f"{extra}"
    )
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: link targets and file hashes, for byte-for-byte comparison."""
    result: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            result[key] = "-> " + os.readlink(path)
        elif path.is_file():
            result[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            result[key] = "dir"
    return result


@dataclass
class Device:
    """An enrolled device in a tmp dir, driven in-process or as a ``ferry-agent run`` process."""

    folder: Path
    repo: DeviceRepository
    config_path: Path
    process: subprocess.Popen[bytes] | None = None
    _agent: Agent | None = field(default=None, repr=False)

    @property
    def config(self) -> AgentConfig:
        return load_config(self.config_path)

    def enroll(self) -> None:
        enroll(self.config, self.repo.url, self.repo.enrollment_token, None)

    @property
    def agent(self) -> Agent:
        if self._agent is None:
            self._agent = Agent(self.config)
        return self._agent

    def sync(self) -> None:
        """One update cycle, then deliver the queued reports over HTTP."""
        self.agent.sync()
        self.agent.sender.flush()

    def slot(self, name: str = "main") -> Slot:
        return Slot(self.config.models_dir, name)

    def models(self) -> dict[str, str]:
        return snapshot(self.config.models_dir)

    def current_version(self, slot: str = "main") -> int | None:
        current = self.slot(slot).current()
        return current.manifest.version if current else None

    # --- as a process ---------------------------------------------------------------

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.folder / "agent.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ferry.agent.cli", "--config", str(self.config_path), "run"],
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
            stdout=log,
            stderr=log,
            cwd=self.folder,
        )
        log.close()
        return self.process

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        path = self.folder / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.stop()
        if self._agent is not None:
            self._agent.close()


@pytest.fixture
def make_device(tmp_path: Path, repo: DeviceRepository) -> Iterator[Any]:
    """Build enrolled devices; ``extra`` is appended to the TOML config."""
    devices: list[Device] = []

    def build(
        extra: str = "", name: str = "device", enrolled: bool = True, interval_s: float = 0.3
    ) -> Device:
        folder = tmp_path / name
        config = write_config(folder, extra, device_id=repo.device_id, interval_s=interval_s)
        device = Device(folder, repo, config)
        if enrolled:
            device.enroll()
        devices.append(device)
        return device

    yield build
    for device in devices:
        device.close()


@pytest.fixture
def device(make_device: Any) -> Device:
    return make_device()
