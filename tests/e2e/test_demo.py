"""`make demo` end to end, small: it must exit 0 with the outcome it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_halts_the_bad_release_in_its_canary_wave_and_ships_the_good_one(
        tmp_path: Path) -> None:
    outcome = tmp_path / "demo.json"
    done = subprocess.run(
        [sys.executable, "-m", "ferry.cli.demo", "--devices", "30", "--bundle-size", "65536",
         "--data-dir", str(tmp_path / "demo"), "--json", str(outcome)],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(outcome.read_text())
    bad = result["bad"]
    assert bad["rollout"]["state"] == "rolled_back" and bad["rollout"]["wave"] == 0
    assert all(w["counts"]["pending"] == w["total"] for w in bad["waves"][1:])
    assert result["good"]["rollout"]["state"] == "completed"
    assert result["fleet"]["models"][0]["versions"] == {"3": 33}
    assert {s["slots"]["main"]["current"]["version"] for s in result["agents"].values()} == {3}
    assert result["simulator"]["reports_mqtt"] > 0 and result["simulator"]["notices"] > 0
