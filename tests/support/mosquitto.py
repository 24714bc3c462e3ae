"""A real Mosquitto broker for tests, on its own free port (never 1883).

`MosquittoBroker` writes a config into a temporary directory, starts
``/usr/sbin/mosquitto -c <conf>`` and waits until the port accepts connections.
It can be stopped and started again on the same port (broker-outage drills) and
told to reload its password file and ACL (``SIGHUP``). Tests that need it call
`require_mosquitto()` first, which skips with a printed reason when the binary
is absent.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import pytest

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "mosquitto")
START_TIMEOUT_S = 10.0


def mosquitto_binary() -> str | None:
    """Path of the mosquitto executable, or None."""
    for candidate in MOSQUITTO_CANDIDATES:
        path = shutil.which(candidate) if "/" not in candidate else candidate
        if path and os.access(path, os.X_OK):
            return path
    return None


def mosquitto_passwd_binary() -> str | None:
    """Path of mosquitto_passwd, or None."""
    return shutil.which("mosquitto_passwd") or (
        "/usr/bin/mosquitto_passwd" if os.access("/usr/bin/mosquitto_passwd", os.X_OK) else None
    )


def require_mosquitto() -> str:
    """The binary's path; skips the calling test (with the reason) when it is absent."""
    path = mosquitto_binary()
    if path is None:
        pytest.skip("mosquitto is not installed (looked for /usr/sbin/mosquitto and PATH)")
    return path


def free_port() -> int:
    """A TCP port that was free a moment ago (never 1883: the kernel picks ephemeral ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_for_port(
    port: int,
    timeout: float = START_TIMEOUT_S,
    host: str = "127.0.0.1",
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Block until something accepts TCP connections on ``port`` (or ``process`` exits)."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise TimeoutError(f"the process exited with {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


@dataclass
class MosquittoBroker:
    """One Mosquitto process; ``extra_conf`` is appended after the listener line.

    Without ``extra_conf`` the broker allows anonymous clients (what most tests
    want); pass ``password_file``/``acl_file`` lines for an authenticated broker.
    """

    workdir: Path
    extra_conf: str = "allow_anonymous true\n"
    port: int = field(default_factory=free_port)
    binary: str = field(default_factory=require_mosquitto)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_conf(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(
            "per_listener_settings false\n"
            # As root, Mosquitto would switch to the `mosquitto` user, which cannot
            # read files in the test's private tmp dir.
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"listener {self.port} 127.0.0.1\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n" + self.extra_conf
        )
        return self.conf_path

    def start(self) -> Self:
        """Start (or restart, on the same port) and wait until it listens."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.write_conf()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path)], stdout=log, stderr=log
        )
        log.close()
        try:
            wait_for_port(self.port, process=self.process)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log_path.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL) — clients see the connection drop."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without a goodbye (outage drills)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def reload(self) -> None:
        """SIGHUP: re-read the password file and ACL without dropping connections."""
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError("mosquitto is not running")
        self.process.send_signal(signal.SIGHUP)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """An anonymous Mosquitto on a free port, stopped after the test."""
    broker = MosquittoBroker(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()
