"""Device check-ins: signed desired-state requests per second, p50/p99, at 64 concurrent clients.

    .venv/bin/python bench/bench_checkin.py [--devices 1000] [--seconds 15] [--quick]

A real ``ferry server`` (SQLite, MQTT off: check-ins are HTTP) with ``--devices``
enrolled devices, each targeted by a rollout, so every answer is a signed
per-device desired state (served from the stored envelope when unchanged, as in
steady state). 64 asyncio clients (one httpx connection each) send
``GET /api/v1/device/desired-state`` with the credentials of devices taken in turn.
The baseline is uvicorn serving a constant JSON document of the same size from a
one-route FastAPI app, measured with the same client on the same machine. The
target is ≥ 50 % of the baseline's requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

from ferry.cli.demo import Operator, ServerProcess, free_port, wait_until
from ferry.protocol import endpoints

CONCURRENCY = 64


async def _load(url: str, headers: list[dict[str, str]], seconds: float) -> dict[str, float]:
    """``CONCURRENCY`` clients in a closed loop for ``seconds``; latencies in ms."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker(offset: int) -> None:
            nonlocal errors
            turn = offset
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = await client.get(url, headers=headers[turn % len(headers)])
                latencies.append((time.perf_counter() - started) * 1000)
                errors += response.status_code != 200
                turn += CONCURRENCY

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return {"requests": len(latencies), "errors": errors,
            "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(latencies[len(latencies) // 2], 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)], 2)}


def _enroll(server: ServerProcess, op: Operator, devices: int) -> list[dict[str, str]]:
    token = op.enrollment_token(None)
    headers = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for index in range(devices):
            answer = http.post(endpoints.ENROLL, json={
                "enrollment_token": token, "device_id": f"bench-{index:05d}",
                "hardware": "x86_64", "agent_version": "bench", "tags": {}}).json()
            headers.append({"Authorization": f"Bearer {answer['credential']}"})
    return headers


def measure_ferry(devices: int, seconds: float, workdir: Path) -> dict[str, float]:
    server = ServerProcess(workdir / "server", env={"FERRY_MQTT_ENABLED": "false"}).start()
    op = Operator(server.url, server.admin_token)
    try:
        (version,) = op.publish_model(workdir / "bundles", [False], 4096)
        headers = _enroll(server, op, devices)
        op.create_rollout(version, [100])
        url = f"{server.url}{endpoints.DESIRED_STATE}"
        asyncio.run(_load(url, headers, 2.0))   # warm-up: every device's envelope is signed
        sample = httpx.get(url, headers=headers[0], timeout=30).content
        result = asyncio.run(_load(url, headers, seconds))
        result["body_bytes"] = len(sample)
        return result
    finally:
        op.close()
        server.stop()


BASELINE_APP = """
from fastapi import FastAPI
from fastapi.responses import Response

BODY = b'{body}'
app = FastAPI()


@app.get("/constant")
def constant() -> Response:
    return Response(BODY, media_type="application/json")
"""


def measure_baseline(body_bytes: int, seconds: float, workdir: Path) -> dict[str, float]:
    """uvicorn + a one-route FastAPI app answering a constant JSON document of the same size."""
    body = json.dumps({"padding": "x" * max(0, body_bytes - 15)})
    (workdir / "baseline_app.py").write_text(textwrap.dedent(BASELINE_APP.format(body=body)))
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "baseline_app:app", "--port",
                                str(port), "--log-level", "warning", "--no-access-log"],
                               cwd=workdir)
    url = f"http://127.0.0.1:{port}/constant"
    try:
        wait_until(lambda: _up(url), 30, "the baseline server")
        asyncio.run(_load(url, [{}], 2.0))
        return asyncio.run(_load(url, [{}], seconds))
    finally:
        process.terminate()
        process.wait(timeout=10)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--quick", action="store_true", help="200 devices, 5 s per run")
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.seconds = 200, 5.0
    with tempfile.TemporaryDirectory(prefix="ferry-bench-checkin-") as tmp:
        ferry = measure_ferry(args.devices, args.seconds, Path(tmp))
        baseline = measure_baseline(int(ferry["body_bytes"]), args.seconds, Path(tmp))
    share = 100 * ferry["rps"] / baseline["rps"] if baseline["rps"] else 0.0
    print(f"{'':>34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, row in (("ferry desired-state (signed)", ferry),
                      ("uvicorn constant JSON (baseline)", baseline)):
        print(f"{name:>34} {row['rps']:>9} {row['p50_ms']:>8} {row['p99_ms']:>8} "
              f"{int(row['errors']):>7}")
    print(f"\n{CONCURRENCY} concurrent clients, {args.devices} devices, "
          f"{int(ferry['body_bytes'])}-byte documents: ferry = {share:.0f} % of the baseline "
          f"(target ≥ 50 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
