"""Print the operator session of docs/cli.md from a real `ferry server` (80 columns).

    .venv/bin/python -m tests.support.operator_session > session.txt

40 cameras in Lyon run vision/detector@1 (two are Raspberry Pis that v2 drops); v2 is a
fine-tune of v1, so the server offers a delta. The script plays the agents: the
cameras of the first wave report, and one of them fails its health probe. Every
`$ ferry …` block is the command's real output (stdout and stderr), then its exit code
when it is not 0.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from ferry.protocol.waves import wave_index
from tests.deltas_server.models import model_pair
from tests.fleet.harness import report_doc
from tests.rollouts.cli_harness import enroll, send_report

FERRY = Path(sys.executable).with_name("ferry")
PROBE = (
    'Traceback (most recent call last):\n  File "/opt/probe/check.py", line 14, in <module>\n'
    "    assert out.shape == (1, 3), out.shape\nAssertionError: (1, 4)"
)
WAVES = [10, 50, 100]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Session:
    def __init__(self, data: Path) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        env["FERRY_ROLLOUT_TICK_S"] = "0.5"
        self.log = (data / "server.log").open("wb")
        self.server = subprocess.Popen(
            [str(FERRY), "server", "--data-dir", str(data / "server"), "--port", str(port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        self.token = (data / "server" / "admin-token").read_text().strip()
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )
        self.env = {**env, "FERRY_SERVER": self.url, "FERRY_TOKEN": self.token}
        self.env.update(COLUMNS="80", FERRY_CONFIG=str(data / "config.toml"))

    def ferry(self, command: str) -> str:
        """Run a command as typed, print it and its output; return the output."""
        run = subprocess.run(
            [str(FERRY), *shlex.split(command)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        print(f"$ ferry {command}\n{run.stdout}", end="")
        if run.returncode:
            print(f"$ echo $?\n{run.returncode}")
        print()
        return run.stdout

    def register(self, weights: Path, hardware: list[str]) -> int:
        data = weights.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        self.http.put(f"/api/v1/blobs/{sha}", content=data).raise_for_status()
        body = {
            "files": [
                {"path": "detector.safetensors", "sha256": sha, "size": len(data)},
            ],
            "format": "safetensors",
            "flavor": "pytorch",
            "signature": {"inputs": [], "outputs": []},
            "hardware": hardware,
            "metadata": {"created_by": "ci@vision", "run_id": "r", "git_commit": "3f2a9c1"},
        }
        r = self.http.post("/api/v1/models/vision/detector/versions", json=body)
        r.raise_for_status()
        number = int(r.json()["version"])
        for stage in ("Staging", "Production"):
            path = f"/api/v1/models/vision/detector/versions/{number}/stage"
            self.http.post(path, json={"stage": stage}).raise_for_status()
        return number

    def report(self, device: dict[str, Any], state: str, rollout: str, **fields: Any) -> None:
        doc = report_doc(device["device_id"], state, at=now(), rollout_id=rollout, **fields)
        doc["detail"] = fields.get("error_code") and PROBE or ""
        send_report(self.url, device, doc)

    def wait_for(self, rollout: str, state: str) -> None:
        while self.http.get(f"/api/v1/rollouts/{rollout}").json()["state"] != state:
            time.sleep(0.2)

    def close(self) -> None:
        self.http.close()
        self.server.terminate()
        self.server.wait(timeout=30)
        self.log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        s = Session(data)
        try:
            play(s, data)
        finally:
            s.close()


def play(s: Session, data: Path) -> None:
    s.http.post("/api/v1/namespaces", json={"name": "vision"}).raise_for_status()
    s.http.post("/api/v1/models", json={"namespace": "vision", "name": "detector"})
    old, new = model_pair(data / "weights", size=4 << 20)
    v1 = s.register(old, ["x86_64", "aarch64", "rpi4"])
    v2 = s.register(new, ["x86_64", "aarch64"])
    token = s.http.post(
        "/api/v1/enrollment-tokens", json={"namespace": "vision", "name": "lyon", "max_uses": 40}
    ).json()["token"]
    hardware = ["x86_64", "aarch64"] * 19 + ["rpi4", "rpi4"]
    fleet = [
        enroll(s.http, token, f"cam-{i:04d}", hw, {"site": "lyon"}) for i, hw in enumerate(hardware)
    ]
    base = s.http.post(
        "/api/v1/rollouts",
        json={"namespace": "vision", "model": "detector", "version": str(v1), "selector": "site=lyon",
              "waves": [100], "bake_s": 0},
    )  # fmt: skip
    base.raise_for_status()
    for device in fleet:
        s.report(device, "committed", base.json()["id"], to_version=v1)
    s.wait_for(base.json()["id"], "completed")
    plan = {"namespace": "vision", "model": "detector", "version": str(v2), "selector": "site=lyon",
            "waves": WAVES, "skip_incompatible": True}  # fmt: skip
    s.http.post("/api/v1/rollouts/plan", json=plan).raise_for_status()  # queues the v1→v2 build
    listing = f"/api/v1/models/vision/detector/versions/{v2}/deltas"
    while s.http.get(listing).json()["deltas"][0]["state"] != "ready":
        time.sleep(0.2)

    selector = "--selector site=lyon --waves 10,50,100"
    s.ferry(f"rollout plan vision/detector@{v2} {selector} --members 4")
    s.ferry(f"rollout plan vision/detector@{v2} {selector} --skip-incompatible --members 4")
    s.ferry(f"inspect vision/detector@{v2}")
    created = s.ferry(
        f"rollout create vision/detector@{v2} {selector} --skip-incompatible --bake 5 "
        "--max-failures 0 --max-failure-pct 100"
    )
    rollout_id = next(line.split()[-1] for line in created.splitlines() if "rollout" in line)
    seed = s.http.get(f"/api/v1/rollouts/{rollout_id}").json()["wave_seed"]
    first = [d for d in fleet[:38] if wave_index(seed, d["device_id"], WAVES) == 0]

    def agents() -> None:
        time.sleep(1.5)
        for device in first[:-1]:
            s.report(device, "downloading", rollout_id, from_version=v1, to_version=v2)
            time.sleep(0.4)
            s.report(device, "committed", rollout_id, from_version=v1, to_version=v2)
        time.sleep(0.6)
        s.report(first[-1], "probing", rollout_id, from_version=v1, to_version=v2)
        time.sleep(0.6)
        s.report(
            first[-1], "rolled_back", rollout_id, from_version=v1, to_version=v2,
            error_code="probe_failed",
        )  # fmt: skip

    thread = threading.Thread(target=agents, daemon=True)
    thread.start()
    s.ferry(f"rollout wait {rollout_id} --interval 0.5")
    thread.join()
    s.ferry(f"rollout devices {rollout_id} --state failed")
    s.ferry(f"rollout rollback {rollout_id}")
    s.ferry("status -n vision")


if __name__ == "__main__":
    main()
