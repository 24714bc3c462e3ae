"""Run every benchmark in bench/ one after another and print their figures.

`make bench` runs the full sizes; `make bench BENCH_ARGS=--quick` runs small ones.
Each benchmark is a script of its own so that it can also be run alone, and so
that one's memory use never inflates another's peak RSS.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ORDER = [
    "bench_registry.py",
    "bench_egress.py",
    "bench_agent.py",
    "bench_deltas.py",
    "bench_checkin.py",
    "bench_rollout.py",
    "bench_dashboard.py",
]


def main(argv: list[str]) -> int:
    failed: list[str] = []
    for name in ORDER:
        script = BENCH_DIR / name
        if not script.exists():
            print(f"== {name}: not present, skipped")
            continue
        print(f"\n== {name} {' '.join(argv)}", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(script), *argv])
        print(f"== {name}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
