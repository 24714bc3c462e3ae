"""Registry upload/download throughput and server memory, beside a plain static server.

Uploads one artifact of ``--size-mb`` to a real ``ferry server`` process with
``curl -T`` (PUT /api/v1/blobs/{sha256}), downloads it back with curl, and
downloads the same file with curl from ``python -m http.server`` (CPython's
single-threaded static file server, the no-auth, no-database baseline). While
uploading it samples the server's VmRSS from /proc/<pid>/status every 20 ms.

Targets: ferry download ≥ 70 % of the static server's rate; server RSS growth
during the upload < 100 MB (the upload streams to disk, so memory stays flat).

    .venv/bin/python bench/bench_registry.py --size-mb 1024
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

CHUNK = 8 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def make_artifact(path: Path, size: int) -> str:
    """Pseudo-random bytes (incompressible), hashed while written."""
    hasher = hashlib.sha256()
    seed = os.urandom(CHUNK)
    with path.open("wb") as out:
        written, n = 0, 0
        while written < size:
            block = hashlib.sha256(n.to_bytes(8, "big")).digest() + seed
            block = block[: min(CHUNK, size - written)]
            hasher.update(block)
            out.write(block)
            written += len(block)
            n += 1
    return hasher.hexdigest()


@dataclass
class Sampler:
    """Peak VmRSS of a process while active."""

    pid: int
    peak_kb: int = 0
    _stop: bool = False

    def run(self) -> None:
        while not self._stop:
            self.peak_kb = max(self.peak_kb, proc_status_kb(self.pid, "VmRSS"))
            time.sleep(0.02)

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop = True
        self._thread.join()


def wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def curl(args: list[str]) -> float:
    """Run curl, return seconds elapsed (curl's own total time)."""
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total}", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout)


def run(size_mb: int, work: Path) -> int:
    size = size_mb * 1024 * 1024
    static_dir = work / "static"
    static_dir.mkdir()
    artifact = static_dir / "artifact.bin"
    print(f"preparing a {size_mb} MiB artifact …", flush=True)
    sha = make_artifact(artifact, size)

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["FERRY_MQTT_ENABLED"] = "false"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ferry.cli.server_cmds",
            "server",
            "--data-dir",
            str(work / "data"),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    static_port = free_port()
    static = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(static_port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(static_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", server)
        wait_http(f"http://127.0.0.1:{static_port}/", static)
        token = (work / "data" / "admin-token").read_text().strip()
        auth = ["-H", f"Authorization: Bearer {token}"]
        blob_url = f"{base}/api/v1/blobs/{sha}"

        rss_before = proc_status_kb(server.pid, "VmRSS")
        with Sampler(server.pid) as sampler:
            up = curl(
                [
                    *auth,
                    "-H",
                    "Content-Type: application/octet-stream",
                    "-T",
                    str(artifact),
                    blob_url,
                ]
            )
        rss_growth_mb = (sampler.peak_kb - rss_before) / 1024

        down = min(curl([*auth, blob_url]) for _ in range(3))
        static_down = min(curl([f"http://127.0.0.1:{static_port}/artifact.bin"]) for _ in range(3))
        hwm_mb = proc_status_kb(server.pid, "VmHWM") / 1024
    finally:
        for proc in (server, static):
            proc.terminate()
            proc.wait(timeout=30)

    mbps = lambda seconds: size / seconds / 1e6
    ratio = static_down / down
    print()
    print(f"{'measure':<42}{'value':>14}")
    print(f"{'artifact size':<42}{size_mb:>10} MiB")
    print(f"{'ferry upload (curl -T, PUT)':<42}{mbps(up):>10.0f} MB/s")
    print(f"{'ferry download (curl, best of 3)':<42}{mbps(down):>10.0f} MB/s")
    print(f"{'http.server download (curl, best of 3)':<42}{mbps(static_down):>10.0f} MB/s")
    print(f"{'ferry / http.server download':<42}{ratio:>13.0%}  (target >= 70%)")
    print(f"{'server RSS before upload':<42}{rss_before / 1024:>10.0f} MB")
    print(
        f"{'server RSS growth during upload (peak)':<42}{rss_growth_mb:>10.1f} MB  (target < 100 MB)"
    )
    print(f"{'server VmHWM at end':<42}{hwm_mb:>10.0f} MB")
    ok = ratio >= 0.70 and rss_growth_mb < 100
    print(f"\nresult: {'PASS' if ok else 'MISSED TARGET'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="128 MiB instead of --size-mb")
    parser.add_argument("--work-dir", type=Path, help="where to put data (default: a temp dir)")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is required")
    size = 128 if args.quick else args.size_mb
    if args.work_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        return run(size, Path(tempfile.mkdtemp(dir=args.work_dir)))
    with tempfile.TemporaryDirectory(prefix="ferry-bench-") as tmp:
        return run(size, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
