"""`ferry server --workers N`: authenticated API requests per second with 1 and N workers.

    .venv/bin/python bench/bench_workers.py [--workers 2] [--seconds 10] [--clients 32]

A real ``ferry server`` on a scratch PostgreSQL database (created and dropped here;
``FERRY_TEST_PG_URL`` as in the tests), MQTT off, once with one worker and once with
``--workers``. ``--clients`` keep-alive connections send ``GET /api/v1/namespaces``
with the admin token (token lookup, one query, JSON) for ``--seconds`` each run. The
load generator runs on the same machine, so on a small machine it takes cores from
the server: read the ratio, not the absolute figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

from ferry.cli.demo import ServerProcess

PG = os.environ.get("FERRY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


async def _load(url: str, token: str, clients: int, seconds: float) -> tuple[int, int]:
    done = errors = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done, errors
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
            while time.monotonic() < deadline:
                response = await http.get("/api/v1/namespaces")
                if response.status_code == 200:
                    done += 1
                else:
                    errors += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return done, errors


def run(workers: int, seconds: float, clients: int) -> float:
    admin = PG.replace("postgresql+psycopg://", "postgresql://")
    name = f"ferry_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server = ServerProcess(
                Path(tmp) / "data",
                env={
                    "FERRY_DATABASE_URL": PG.rsplit("/", 1)[0] + f"/{name}",
                    "FERRY_WORKERS": str(workers),
                    "FERRY_MQTT_ENABLED": "false",
                },
            ).start()
            try:
                asyncio.run(_load(server.url, server.admin_token, clients, 2))  # warm-up
                done, errors = asyncio.run(_load(server.url, server.admin_token, clients, seconds))
            finally:
                server.stop()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    rate = done / seconds
    print(
        f"workers={workers}: {rate:,.0f} requests/s ({done} ok, {errors} errors, {clients} clients)"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    one = run(1, args.seconds, args.clients)
    many = run(args.workers, args.seconds, args.clients)
    print(f"ratio {args.workers} workers / 1: {many / one:.2f} (cores: {os.cpu_count()})")


if __name__ == "__main__":
    main()
