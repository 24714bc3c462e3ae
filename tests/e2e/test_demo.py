"""`make demo` end to end at its real size: it must exit 0 with the outcome it promises.

The CI run that let the SQLite lock-up land ran 30 simulated devices with 64 KiB
bundles; this runs exactly what `make demo` runs (200 simulated devices, 3 agents,
1 MiB bundles, the same three rollouts) on the embedded default.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _server_statuses(log: Path) -> list[int]:
    statuses = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "request":
            statuses.append(int(entry["status"]))
    return statuses


def test_demo_at_full_size_halts_the_bad_release_and_ships_the_good_one(tmp_path: Path) -> None:
    outcome = tmp_path / "demo.json"
    data_dir = tmp_path / "demo"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferry.cli.demo",
            "--data-dir",
            str(data_dir),
            "--json",
            str(outcome),
        ],
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"},
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-4000:]
    assert "Traceback" not in printed
    result = json.loads(outcome.read_text())
    bad = result["bad"]
    assert bad["rollout"]["state"] == "rolled_back" and bad["rollout"]["wave"] == 1
    assert all(w["counts"]["pending"] == w["total"] for w in bad["waves"][1:])
    assert result["good"]["rollout"]["state"] == "completed"
    assert result["fleet"]["models"][0]["versions"] == {"3": 203}
    assert {s["slots"]["main"]["current"]["version"] for s in result["agents"].values()} == {3}
    assert result["simulator"]["reports_mqtt"] > 0 and result["simulator"]["notices"] > 0
    # The summary says what happened; no address is left on screen once the server is gone.
    assert "halted in wave 1 of 3 and rolled back" in printed and "(100 %)" in printed
    assert "http://127.0.0.1" not in printed
    statuses = _server_statuses(data_dir / "server" / "server.log")
    assert len(statuses) > 500
    assert [s for s in statuses if s >= 500] == []


def test_a_failing_demo_prints_one_line_and_where_the_logs_are(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the demo wants its data directory")
    done = subprocess.run(
        [sys.executable, "-m", "ferry.cli.demo", "--data-dir", str(blocker / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 1
    assert "Traceback" not in printed and "╭" not in printed
    assert "demo failed:" in printed and "logs:" in printed
    assert len(printed.strip().splitlines()) <= 4
