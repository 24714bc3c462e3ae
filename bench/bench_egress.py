"""Who sends the blob bytes: the Python server, nginx (X-Accel-Redirect), or the S3 store.

Uploads one incompressible artifact of ``--size-mb`` to real ``ferry server``
processes and downloads it ``--rounds`` times with curl along three paths:

- python: the local store, the server sends the file itself;
- nginx:  the local store behind `deploy/nginx/egress.conf`, the server only
  authorises (``FERRY_BLOB_ACCEL_REDIRECT``);
- s3:     the S3 backend on moto's server, the server answers 307 to a presigned
  URL and curl follows it (``--s3``; moto is a pure-Python test server, so its
  throughput says nothing about real S3 — the server CPU column is the point).

Prints, per path, the download rate and the CPU seconds the ferry server process
spent per GiB sent (utime+stime from /proc, before and after).

    .venv/bin/python bench/bench_egress.py --size-mb 256 --rounds 3 --s3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferry.cli.demo import ServerProcess, wait_until
from tests.e2e._replicas import nginx_binary
from tests.support.mosquitto import free_port
from tests.support.nginx_egress import egress_conf, start_nginx, stop_nginx
from tests.support.s3 import MotoServer

GIB = 1024**3


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_artifact(path: Path, size: int) -> str:
    hasher = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 8 << 20))
            hasher.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return hasher.hexdigest()


def upload(server: ServerProcess, artifact: Path, sha: str) -> None:
    token = server.admin_token
    subprocess.run(
        ["curl", "-sSf", "-o", "/dev/null", "-T", str(artifact),
         "-H", f"Authorization: Bearer {token}", f"{server.url}/api/v1/blobs/{sha}"],
        check=True,
    )  # fmt: skip


def measure(name: str, server: ServerProcess, base: str, sha: str, size: int, rounds: int) -> None:
    assert server.process is not None
    token = server.admin_token
    before = cpu_seconds(server.process.pid)
    started = time.perf_counter()
    for _ in range(rounds):
        subprocess.run(
            ["curl", "-sSfL", "-o", "/dev/null", "-H", f"Authorization: Bearer {token}",
             f"{base}/api/v1/blobs/{sha}"],
            check=True,
        )  # fmt: skip
    wall = time.perf_counter() - started
    cpu = cpu_seconds(server.process.pid) - before
    sent = size * rounds
    print(
        f"{name:<7} {sent / wall / 1e6:9.0f} MB/s   server CPU {cpu / (sent / GIB):6.3f} s/GiB"
        f"   ({rounds} × {size >> 20} MiB in {wall:.2f} s)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--s3", action="store_true", help="also the S3 path (moto)")
    parser.add_argument("--quick", action="store_true", help="64 MiB, one round (make bench)")
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.rounds = 64, 1
    size = args.size_mb << 20
    binary = nginx_binary()
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-egress-"))
    servers: list[ServerProcess] = []
    nginx = None
    moto = None
    try:
        artifact = work / "artifact.bin"
        sha = make_artifact(artifact, size)
        quiet = {"FERRY_MQTT_ENABLED": "false"}
        plain = ServerProcess(work / "python", env=quiet).start()
        servers.append(plain)
        upload(plain, artifact, sha)
        measure("python", plain, plain.url, sha, size, args.rounds)

        if binary is None:
            print("nginx   skipped: nginx is not installed")
        else:
            accel = ServerProcess(
                work / "nginx", env={**quiet, "FERRY_BLOB_ACCEL_REDIRECT": "/_ferry_blobs/"}
            ).start()
            servers.append(accel)
            port = free_port()
            conf = egress_conf(work / "nginx-conf", port, accel.http_port, accel.data_dir / "blobs")
            nginx = start_nginx(binary, conf)
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: _answers(url), 20, "nginx")
            upload(accel, artifact, sha)
            measure("nginx", accel, url, sha, size, args.rounds)

        if args.s3:
            moto = MotoServer(work / "moto.log").start()
            bucket = moto.bucket()
            s3 = ServerProcess(work / "s3", env={**quiet, **moto.env(bucket)}).start()
            servers.append(s3)
            upload(s3, artifact, sha)
            measure("s3", s3, s3.url, sha, size, args.rounds)
    finally:
        if nginx is not None:
            stop_nginx(nginx)
        for server in servers:
            server.stop()
        if moto is not None:
            moto.stop()
        shutil.rmtree(work, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
