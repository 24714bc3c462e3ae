"""A production-shaped stack of real processes for the drills.

Mosquitto (the example config of firmware_examples/mosquitto: per-device
logins and the ACL) on a free port, and ``ferry server`` pointed at it, keeping
Mosquitto's password file up to date and SIGHUP-ing it. The operator side comes
from `ferry.cli.demo`, the same code ``make demo`` runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ferry.cli.demo import Operator, ServerProcess, SimulatorProcess, wait_until
from ferry.server.mqtt import mosquitto_hash
from tests.support.mosquitto import MosquittoBroker

EXAMPLE = Path(__file__).resolve().parents[2] / "firmware_examples" / "mosquitto"
SERVER_PASSWORD = "e2e-server-password"
# An operator's broker login (the server merges, never writes, the operator's file).
OBSERVER = ("e2e-observer", "e2e-observer-password")
_LOCAL_KEYS = {
    "listener",
    "per_listener_settings",
    "persistence",
    "persistence_location",
    "autosave_interval",
    "log_dest",
    "log_type",
    "password_file",
    "acl_file",
    "pid_file",
}
WAIT_S = 90.0


def example_broker(workdir: Path) -> MosquittoBroker:
    """Mosquitto with the example config's settings, this test's paths and a free port."""
    broker = MosquittoBroker(workdir)
    kept = [
        line
        for line in (EXAMPLE / "mosquitto.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#") and line.split()[0] not in _LOCAL_KEYS
    ]
    broker.extra_conf = "\n".join(
        [*kept, f"password_file {workdir / 'passwd'}", f"acl_file {workdir / 'acl'}", ""]
    )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "passwd").write_text("")
    (workdir / "acl").write_text(
        (EXAMPLE / "acl").read_text() + f"\nuser {OBSERVER[0]}\ntopic read ferry/v1/#\n"
    )
    (workdir / "operator.passwd").write_text(
        f"{OBSERVER[0]}:{mosquitto_hash(OBSERVER[1], os.urandom(12))}\n"
    )
    return broker


@dataclass
class Stack:
    root: Path
    broker: MosquittoBroker = field(init=False)
    server: ServerProcess = field(init=False)
    op: Operator | None = None
    sims: list[SimulatorProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.broker = example_broker(self.root / "mosquitto")
        self.server = ServerProcess(
            self.root / "server",
            env={
                "FERRY_MQTT_URL": self.broker.url,
                "FERRY_MQTT_PASSWORD": SERVER_PASSWORD,
                "FERRY_MQTT_PASSWORD_FILE": str(self.broker.workdir / "passwd"),
                "FERRY_MQTT_OPERATOR_PASSWORD_FILE": str(self.broker.workdir / "operator.passwd"),
                "FERRY_MQTT_PID_FILE": str(self.root / "mosquitto.pid"),
                "FERRY_POLL_INTERVAL_S": "1",
            },
        )

    def start(self) -> Stack:
        self.start_broker()
        self.server.start()
        self.op = Operator(self.server.url, self.server.admin_token)
        return self

    def start_broker(self) -> None:
        self.broker.start()
        assert self.broker.process is not None
        (self.root / "mosquitto.pid").write_text(f"{self.broker.process.pid}\n")

    def simulate(self, devices: int, prefix: str, *extra: str) -> SimulatorProcess:
        assert self.op is not None
        token = self.op.enrollment_token(None)
        sim = SimulatorProcess(
            self.root / "sim",
            self.server.url,
            token,
            devices,
            prefix=prefix,
            extra=["--poll-interval", "1", *extra],
        ).start()
        self.sims.append(sim)
        return sim

    def stop(self) -> None:
        for sim in self.sims:
            if sim.process is not None:
                sim.stop()
        if self.op is not None:
            self.op.close()
        self.server.stop()
        self.broker.stop()

    # --- reading the server ----------------------------------------------------------

    def devices(self) -> list[dict[str, Any]]:
        assert self.op is not None
        devices: list[dict[str, Any]] = self.op._call("GET", "/devices?limit=10000")
        return devices

    def history(self, device_id: str) -> list[dict[str, Any]]:
        assert self.op is not None
        detail: dict[str, Any] = self.op._call("GET", f"/devices/{device_id}?history=1000")
        return list(detail["history"])

    def installed(self) -> dict[str, int | None]:
        return {
            d["id"]: next((s["installed_version"] for s in d["slots"] if s["slot"] == "main"), None)
            for d in self.devices()
        }

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the server's ``/metrics`` (0.0 when the series does not exist yet)."""
        text = self._metrics_text()
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = re.compile(
            rf"^{re.escape(name)}(?:\{{{re.escape(wanted)}\}})? (\S+)$", re.MULTILINE
        )
        match = pattern.search(text)
        return float(match.group(1)) if match else 0.0

    def _metrics_text(self) -> str:
        """A server saturated by a benchmark's fleet may answer late: ask up to three times."""
        url = f"{self.server.url}/metrics"
        for _ in range(2):
            try:
                return httpx.get(url, timeout=30).text
            except httpx.TransportError:
                continue
        return httpx.get(url, timeout=30).text

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        wait_until(predicate, timeout, what, interval=0.25)


def running_stack(root: Path) -> Iterator[Stack]:
    stack = Stack(root).start()
    try:
        yield stack
    finally:
        stack.stop()
