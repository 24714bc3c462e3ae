"""The shipped alert rules and Grafana dashboard: valid, tested, and naming real metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ferry.server.mqtt import MqttMetrics
from tests.dashboard.helpers import live_rollout
from tests.fleet.harness import Fleet

DOCS = Path(__file__).resolve().parents[2] / "docs" / "observability"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (apt package prometheus; .ci/run installs it)",
)
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    run = subprocess.run(
        [PROMTOOL or "", "check", "rules", "alerts.yml"],
        cwd=DOCS,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 5 rules found" in run.stdout


@needs_promtool
def test_each_alert_fires_on_its_scenario_and_not_before() -> None:
    run = subprocess.run(
        [PROMTOOL or "", "test", "rules", "alerts_test.yml"],
        cwd=DOCS,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def _referenced(text: str) -> set[str]:
    names = set(re.findall(r"\b(ferry_[a-z0-9_]+)", text))
    return {next((n.removesuffix(s) for s in SUFFIXES if n.endswith(s)), n) for n in names}


def test_rules_and_dashboard_name_only_metrics_the_server_exports(fleet: Fleet) -> None:
    live_rollout(fleet)
    MqttMetrics(fleet.app.state.ctx.metrics.registry)  # as `start_mqtt` does (MQTT is off here)
    exported = _referenced(
        " ".join(
            re.findall(
                r"^# TYPE (ferry_[a-z0-9_]+) ", fleet.client.get("/metrics").text, re.MULTILINE
            )
        )
    )
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    wanted = _referenced((DOCS / "alerts.yml").read_text()) | _referenced(exprs)
    assert wanted - exported == set()
    assert len(dashboard["panels"]) >= 15
