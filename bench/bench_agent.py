"""Agent benchmark: memory at idle and while installing, and time from a desired-state
change to ``committed`` next to a bare ``curl`` download of the same bytes.

Runs a real ``ferry-agent run`` process against the repository simulator
(``tests/support/device_repository.py``) on loopback:

    .venv/bin/python bench/bench_agent.py            # 200 MB install, 50 MB timing
    .venv/bin/python bench/bench_agent.py --quick    # 20 MB / 5 MB

Memory comes from ``/proc/<pid>/status``: ``VmRSS`` once the agent is idle,
``VmHWM`` (peak resident set) after the install. The agent runs as on a device:
with ``MALLOC_ARENA_MAX=2`` (as in ``firmware_examples/ferry-agent.service``) and
without the packages that ``pip install ferry`` does not bring (the dev venv has
the server extras, and httpx imports rich, click and pygments for its own CLI
when they happen to be installed); the idle RSS in the dev venv as is, is
printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferry.agent.config import load_config
from ferry.agent.enroll import enroll
from tests.support.device_repository import DeviceRepository

MB = 1 << 20
NOT_ON_A_DEVICE = ("rich", "click", "pygments", "typer", "fastapi", "sqlmodel", "uvicorn", "numpy")
DEVICE_LIKE = (
    "import sys\n"
    "class Absent:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    f"        if name.split('.')[0] in {NOT_ON_A_DEVICE!r}: raise ImportError(name)\n"
    "sys.meta_path.insert(0, Absent())\n"
    "from ferry.agent.cli import main\n"
    "sys.exit(main())\n"
)


def proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def write_config(folder: Path, device_id: str) -> Path:
    path = folder / "agent.toml"
    path.write_text(
        f'state_dir = "state"\nhardware = "x86_64"\ndevice_id = "{device_id}"\nlog_level = "warning"\n'
        "[poll]\ninterval_s = 0.05\njitter = 0\nbackoff_min_s = 0.05\nbackoff_max_s = 0.5\n"
        "[report]\nretry_s = 0.2\n[install]\nuse_deltas = false\n"
    )
    return path


class Bench:
    """One simulator and one agent process in a temporary folder."""

    def __init__(self, folder: Path, device_like: bool = True) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.repo = DeviceRepository().start()
        self.config_path = write_config(folder, self.repo.device_id)
        self.config = load_config(self.config_path)
        enroll(self.config, self.repo.url, self.repo.enrollment_token, None)
        self.version = 0
        log = (folder / "agent.log").open("ab")
        entry = ["-c", DEVICE_LIKE] if device_like else ["-m", "ferry.agent.cli"]
        self.process = subprocess.Popen(
            [sys.executable, *entry, "--config", str(self.config_path), "run"],
            env={**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_ARENA_MAX": "2"},
            stdout=log,
            stderr=log,
        )

    def current(self) -> int | None:
        link = self.config.models_dir / "main" / "current"
        try:
            return int(os.readlink(link).split("/")[-1].split("-")[0][1:])
        except FileNotFoundError:
            return None

    def install(self, size: int) -> tuple[float, dict[str, int], str]:
        """Target a new version of ``size`` bytes; seconds until it runs, agent's timings, sha."""
        self.version += 1
        payload = os.urandom(size)
        bundle = self.repo.add_bundle({"model.bin": payload}, version=self.version)
        start = time.perf_counter()
        self.repo.target({"main": bundle})
        while self.current() != self.version:
            if self.process.poll() is not None:
                raise RuntimeError((self.folder / "agent.log").read_text()[-2000:])
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        self.repo.wait_for(lambda: self.repo.states()[-1:] == ["committed"], timeout=60)
        timings = self.repo.reports_for("main")[-1]["timings"]
        return elapsed, timings, bundle.manifest.files[0].sha256

    def curl(self, sha256: str) -> float:
        url = f"{self.repo.url}/api/v1/blobs/{sha256}"
        start = time.perf_counter()
        subprocess.run(
            [
                "curl",
                "-sf",
                "-o",
                os.devnull,
                "-H",
                f"Authorization: Bearer {self.repo.credential}",
                url,
            ],
            check=True,
        )
        return time.perf_counter() - start

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.repo.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 MB install, 5 MB timing")
    args = parser.parse_args()
    install_mb, timing_mb, runs = (20, 5, 3) if args.quick else (200, 50, 3)
    folder = Path(tempfile.mkdtemp(prefix="ferry-bench-agent-"))
    dev = Bench(folder / "dev-venv", device_like=False)
    try:
        time.sleep(2.0)
        dev_idle_kb = proc_kb(dev.process.pid, "VmRSS")
    finally:
        dev.close()
    bench = Bench(folder / "device")
    try:
        time.sleep(2.0)  # let it settle: first sync done, idle loop running
        idle_kb = proc_kb(bench.process.pid, "VmRSS")
        elapsed, _, _ = bench.install(install_mb * MB)
        peak_kb = proc_kb(bench.process.pid, "VmHWM")
        timings = [bench.install(timing_mb * MB) for _ in range(runs)]
        curl_s = [bench.curl(sha) for _, _, sha in timings]
    finally:
        bench.close()
        shutil.rmtree(folder, ignore_errors=True)
    agent_s = statistics.median(t for t, _, _ in timings)
    result = {
        "idle_rss_mb": round(idle_kb / 1024, 1),
        "idle_rss_dev_venv_mb": round(dev_idle_kb / 1024, 1),
        "install_size_mb": install_mb,
        "install_seconds": round(elapsed, 2),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "peak_above_idle_mb": round((peak_kb - idle_kb) / 1024, 1),
        "timing_size_mb": timing_mb,
        "desired_state_to_committed_s": round(agent_s, 3),
        "agent_total_ms": statistics.median(t["total_ms"] for _, t, _ in timings),
        "agent_step_ms": timings[-1][1],
        "curl_download_s": round(statistics.median(curl_s), 3),
    }
    print(
        f"agent idle RSS:                       {result['idle_rss_mb']} MB   (target < 40 MB; "
        f"{result['idle_rss_dev_venv_mb']} MB in the dev venv)"
    )
    print(
        f"peak RSS installing {install_mb} MB:            {result['peak_rss_mb']} MB, "
        f"{result['peak_above_idle_mb']} MB above idle (target < 100 MB), {elapsed:.2f} s"
    )
    print(
        f"{timing_mb} MB: desired state -> committed:  {agent_s:.3f} s (median of {runs}; "
        f"agent's own total {result['agent_total_ms']} ms)"
    )
    print(f"  steps of the last run (ms):         {result['agent_step_ms']}")
    print(f"{timing_mb} MB: bare curl download:            {result['curl_download_s']:.3f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
