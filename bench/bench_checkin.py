"""Device check-ins: signed desired-state requests per second, p50/p99, at 64 concurrent clients.

    .venv/bin/python bench/bench_checkin.py [--devices 1000] [--seconds 15] [--quick]

A real ``ferry server`` (SQLite, MQTT off: check-ins are HTTP) with ``--devices``
enrolled devices, each targeted by a rollout, so every answer is a signed
per-device desired state (served from the stored envelope when unchanged, as in
steady state), measured with the check-in cache on (the default) and off. 64
clients (one keep-alive connection each) send ``GET /api/v1/device/desired-state``
with the credentials of devices taken in turn. The baselines are uvicorn serving
a constant JSON document of the same size, from a one-route FastAPI app and from a
bare ASGI callable, measured with the same client on the same machine. The target
is ≥ 50 % of the baseline's requests per second.
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
from urllib.parse import urlsplit

import httpx
import psutil

from ferry.cli.demo import Operator, ServerProcess, free_port, wait_until
from ferry.protocol import endpoints

CONCURRENCY = 64


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One keep-alive GET; returns the status code after reading the whole body."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        (
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length:")
        ),
        0,
    )
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def _load(
    url: str, headers: list[dict[str, str]], seconds: float, server_pid: int | None = None
) -> dict[str, float]:
    """``CONCURRENCY`` clients in a closed loop for ``seconds``; latencies in ms, and the CPU
    the server and this client spent per request (both share the machine's cores).

    Each client is one keep-alive connection speaking plain HTTP/1.1 over asyncio
    streams: a load generator cheap enough (~0.1 ms of CPU a request) that the
    servers, not the client, set the pace. (httpx's shared pool spends up to 5 ms
    a request scheduling 64 connections, which hid most of the servers' difference.)
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [
        (
            f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in h.items())
            + "\r\n"
        ).encode()
        for h in headers
    ]
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        turn = offset
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                status = await _get(reader, writer, requests[turn % len(requests)])
                latencies.append((time.perf_counter() - started) * 1000)
                errors += status != 200
                turn += CONCURRENCY
        finally:
            writer.close()

    server_cpu = _cpu_s(server_pid) if server_pid else 0.0
    client_cpu, started = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
    elapsed = time.monotonic() - started
    client_cpu = time.process_time() - client_cpu
    server_cpu = _cpu_s(server_pid) - server_cpu if server_pid else 0.0
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "server_cpu_ms": round(1000 * server_cpu / max(1, len(latencies)), 2),
        "client_cpu_ms": round(1000 * client_cpu / max(1, len(latencies)), 2),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2], 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 2),
    }


def _enroll(server: ServerProcess, op: Operator, devices: int) -> list[dict[str, str]]:
    token = op.enrollment_token(None)
    headers = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for index in range(devices):
            answer = http.post(
                endpoints.ENROLL,
                json={
                    "enrollment_token": token,
                    "device_id": f"bench-{index:05d}",
                    "hardware": "x86_64",
                    "agent_version": "bench",
                    "tags": {},
                },
            ).json()
            headers.append({"Authorization": f"Bearer {answer['credential']}"})
    return headers


async def _warm_up(url: str, headers: list[dict[str, str]]) -> None:
    """One check-in per device, so each has its signed document stored (the steady state)."""
    # Drop idle connections before uvicorn does (5 s), or a reused one may be closed under us.
    limits = httpx.Limits(max_connections=CONCURRENCY, keepalive_expiry=2.0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for start in range(0, len(headers), CONCURRENCY):
            answers = await asyncio.gather(
                *(client.get(url, headers=h) for h in headers[start : start + CONCURRENCY])
            )
            if any(a.status_code != 200 for a in answers):
                raise SystemExit(f"warm-up check-in failed: {answers[0].text[:300]}")


def measure_ferry(
    devices: int, seconds: float, workdir: Path, cache: bool = True
) -> dict[str, float]:
    """``cache=False`` sets ``FERRY_CHECKIN_CACHE_POLL_S=0``: every check-in takes the
    database path (authenticate, load the device, compute its claims)."""
    env = {"FERRY_MQTT_ENABLED": "false", "FERRY_CHECKIN_CACHE_POLL_S": "0.5" if cache else "0"}
    server = ServerProcess(workdir / ("server" if cache else "server-nocache"), env=env).start()
    op = Operator(server.url, server.admin_token)
    try:
        (version,) = op.publish_model(workdir / "bundles", [False], 4096)
        headers = _enroll(server, op, devices)
        op.create_rollout(version, [100])
        url = f"{server.url}{endpoints.DESIRED_STATE}"
        asyncio.run(_warm_up(url, headers))
        sample = httpx.get(url, headers=headers[0], timeout=30).content
        assert server.process is not None
        result = asyncio.run(_load(url, headers, seconds, server.process.pid))
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


async def bare(scope, receive, send):
    assert scope["type"] == "http"
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(BODY)).encode())]}})
    await send({{"type": "http.response.body", "body": BODY}})
"""


def measure_baseline(
    body_bytes: int, seconds: float, workdir: Path, target: str
) -> dict[str, float]:
    """uvicorn answering a constant JSON document of the same size: ``app`` is a one-route
    FastAPI app (sync route, as Ferry's), ``bare`` a plain ASGI callable."""
    body = json.dumps({"padding": "x" * max(0, body_bytes - 15)})
    (workdir / "baseline_app.py").write_text(textwrap.dedent(BASELINE_APP.format(body=body)))
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"baseline_app:{target}",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=workdir,
    )
    url = f"http://127.0.0.1:{port}/constant"
    try:
        wait_until(lambda: _up(url), 30, "the baseline server")
        asyncio.run(_load(url, [{}], 2.0))
        return asyncio.run(_load(url, [{}], seconds, process.pid))
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
        rows = {"ferry desired-state, cached": measure_ferry(args.devices, args.seconds, Path(tmp))}
        rows["ferry desired-state, cache off"] = measure_ferry(
            args.devices, args.seconds, Path(tmp), cache=False
        )
        size = int(rows["ferry desired-state, cached"]["body_bytes"])
        rows["uvicorn + FastAPI route (baseline)"] = measure_baseline(
            size, args.seconds, Path(tmp), "app"
        )
        rows["uvicorn + bare ASGI (baseline)"] = measure_baseline(
            size, args.seconds, Path(tmp), "bare"
        )
    print(
        f"{'':>36} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'server CPU ms/req':>18} {'client CPU ms/req':>18}"
    )
    for name, row in rows.items():
        print(
            f"{name:>36} {row['rps']:>9} {row['p50_ms']:>8} {row['p99_ms']:>8} "
            f"{int(row['errors']):>7} {row['server_cpu_ms']:>18} {row['client_cpu_ms']:>18}"
        )
    cached = rows["ferry desired-state, cached"]["rps"]
    print(f"\n{CONCURRENCY} concurrent clients, {args.devices} devices, {size}-byte documents.")
    for name in ("uvicorn + FastAPI route (baseline)", "uvicorn + bare ASGI (baseline)"):
        share = 100 * cached / rows[name]["rps"] if rows[name]["rps"] else 0.0
        print(f"ferry (cached) = {share:.0f} % of {name} (target ≥ 50 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
