"""The dashboard at fleet scale: render time and bytes of each page for a 10,000-device rollout.

    .venv/bin/python bench/bench_dashboard.py [--devices 10000] [--repeat 5] [--quick]

Set-up (in-process, then disposed): a namespace, a model with two versions, N devices
inserted straight into the tables (enrolling 10,000 over HTTP would benchmark
enrolment, not the dashboard), a rollout of v2 over all of them created through the
API (waves 1, 10, 50, 100), and device states spread as in a rollout caught mid-way:
waves 1-2 committed but 2 % failed with a probe error, wave 3 a mix of pending,
downloading, installing, committed, failed; every device has a slot and the failed
ones a report with probe output. Then a real ``ferry server`` process (SQLite) serves
the pages, and a signed-in HTTP client fetches each one ``--repeat`` times. Printed per
page: median and worst wall time, and bytes on the wire (no compression). Also the time
to the first server-sent event of the live rollout page and one ``/metrics`` scrape.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import Session, col, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferry.protocol.timefmt import format_time, utcnow
from ferry.server.app import create_app
from ferry.server.core.settings import Settings
from ferry.server.fleet.tables import Device, DeviceReport, DeviceSlot
from ferry.server.rollouts.tables import RolloutDevice
from tests.dashboard.live import LiveServer

API = "/api/v1"
WAVES = [1, 10, 50, 100]


def _publish(client: TestClient, admin: dict[str, str], accuracy: float) -> None:
    data = secrets.token_bytes(1024)
    sha = hashlib.sha256(data).hexdigest()
    client.put(f"{API}/blobs/{sha}", content=data, headers=admin)
    r = client.post(
        f"{API}/models/vision/det/versions",
        headers=admin,
        json={
            "files": [{"path": "model.onnx", "sha256": sha, "size": len(data)}],
            "format": "onnx",
            "flavor": "onnxruntime",
            "signature": {},
            "hardware": ["x86_64"],
            "metadata": {
                "created_by": "bench",
                "run_id": "r",
                "git_commit": "c",
                "metrics": {"accuracy": accuracy},
            },
        },
    )
    version = r.json()["version"]
    for stage in ("Staging", "Production"):
        client.post(
            f"{API}/models/vision/det/versions/{version}/stage",
            headers=admin,
            json={"stage": stage},
        )


def populate(data_dir: Path, devices: int) -> str:
    """The fleet and its rollout; returns the rollout id."""
    settings = Settings(data_dir=data_dir, print_admin_token=False, start_webhook_worker=False)
    app = create_app(settings)
    logging.getLogger("ferry").setLevel(logging.WARNING)  # set-up requests are not the figures
    admin = {"Authorization": f"Bearer {settings.admin_token_path.read_text().strip()}"}
    engine = app.state.ctx.engine
    now = format_time(utcnow())
    with TestClient(app) as client:
        client.post(f"{API}/namespaces", json={"name": "vision"}, headers=admin)
        client.post(f"{API}/models", json={"namespace": "vision", "name": "det"}, headers=admin)
        _publish(client, admin, 0.91)
        _publish(client, admin, 0.93)
        with Session(engine) as session:
            for i in range(devices):
                session.add(
                    Device(
                        id=f"cam-{i:05d}",
                        namespace="vision",
                        hardware="x86_64",
                        tags={"hw": "x86_64", "region": "eu" if i % 2 else "us"},
                        groups=["all"],
                        credential_hash=secrets.token_hex(32),
                        last_seen_at=now,
                    )
                )
            session.commit()
        r = client.post(
            f"{API}/rollouts",
            headers=admin,
            json={
                "namespace": "vision",
                "model": "det",
                "version": "2",
                "waves": WAVES,
                "bake_s": 3600,
                "max_failure_pct": 50,
                "start_paused": True,
            },
        )
        rollout = r.json()["id"]
        client.post(f"{API}/rollouts/{rollout}/resume", headers=admin)
        client.post(f"{API}/rollouts/{rollout}/advance", headers=admin)
        client.post(f"{API}/rollouts/{rollout}/advance", headers=admin)
    _spread_states(engine, int(rollout.removeprefix("r-")), now)
    app.state.ctx.engine.dispose()
    app.state.ctx.read_engine.dispose()
    return str(rollout)


def _spread_states(engine: object, pk: int, now: str) -> None:
    rng = random.Random(7)
    with Session(engine) as session:  # type: ignore[arg-type]
        members = session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == pk)).all()
        for m in members:
            if m.wave <= 1:
                state = "rolled_back" if rng.random() < 0.02 else "committed"
            elif m.wave == 2:
                state = rng.choice(
                    [
                        "pending",
                        "downloading",
                        "installing",
                        "committed",
                        "committed",
                        "committed",
                        "failed",
                    ]
                )
            else:
                state = "pending"
            m.state, m.updated_at = state, now
            m.error_code = "probe_failed" if state in ("failed", "rolled_back") else None
            session.add(m)
            installed = 2 if state == "committed" else 1
            session.add(
                DeviceSlot(
                    device_id=m.device_id,
                    slot="main",
                    model="vision/det",
                    installed_version=installed,
                    state=state if state not in ("pending",) else "idle",
                    updated_at=now,
                )
            )
            if m.error_code:
                session.add(
                    DeviceReport(
                        report_id=secrets.token_hex(16),
                        device_id=m.device_id,
                        slot="main",
                        state=state,
                        at=now,
                        from_version=1,
                        to_version=2,
                        error_code="probe_failed",
                        rollout_id=f"r-{pk}",
                        detail="probe exited 1: accuracy 0.41 < 0.80 on the holdout sample",
                    )
                )
        session.exec(
            update(RolloutDevice)  # type: ignore[call-overload]
            .where(col(RolloutDevice.rollout_id) == pk)
            .values(last_report_at=now)
        )
        session.commit()


def timed(client: httpx.Client, url: str, repeat: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        r = client.get(url)
        times.append(time.perf_counter() - started)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
        size = len(r.content)
    return times, size


def first_event(client: httpx.Client, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with client.stream("GET", url) as response:
        buffer = b""
        for chunk in response.iter_bytes():
            buffer += chunk
            if b"event: live" in buffer and buffer.endswith(b"\n\n"):
                return time.perf_counter() - started, len(buffer)
    raise RuntimeError("the stream ended without an event")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1,000 devices, 3 repeats")
    args = parser.parse_args(argv)
    devices, repeat = (1000, 3) if args.quick else (args.devices, args.repeat)
    with tempfile.TemporaryDirectory(prefix="ferry-bench-dash-") as tmp:
        data_dir = Path(tmp) / "data"
        started = time.perf_counter()
        rollout = populate(data_dir, devices)
        print(
            f"set-up: {devices} devices, rollout {rollout} over waves {WAVES}, "
            f"{time.perf_counter() - started:.1f} s"
        )
        server = LiveServer(data_dir)
        server.start()
        try:
            with httpx.Client(base_url=server.base, timeout=60) as client:
                r = client.post("/ui/login", data={"token": server.admin_token})
                assert r.status_code == 303 and "ferry_session" in client.cookies, r.status_code
                pages = [
                    ("rollout page", f"/ui/rollouts/{rollout}"),
                    ("failed devices (first 100)", f"/ui/rollouts/{rollout}/devices"),
                    ("rollouts list", "/ui/rollouts"),
                    ("fleet page", "/ui/fleet"),
                    ("fleet page, tag filter", "/ui/fleet?tag=region%3Deu"),
                    ("device page", "/ui/devices/cam-00000"),
                    ("model page", "/ui/models/vision/det"),
                    ("audit page", "/ui/audit"),
                    ("/metrics", "/metrics"),
                ]
                print(f"{'page':<28} {'median ms':>10} {'worst ms':>10} {'bytes':>10}")
                for name, url in pages:
                    times, size = timed(client, url, repeat)
                    print(
                        f"{name:<28} {statistics.median(times) * 1000:>10.1f} "
                        f"{max(times) * 1000:>10.1f} {size:>10}"
                    )
                seconds, size = first_event(client, f"/ui/rollouts/{rollout}/events")
                print(f"{'first SSE event':<28} {seconds * 1000:>10.1f} {'':>10} {size:>10}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
