"""A real ``ferry server`` and a real ``ferry-agent``: the agent updates through a delta.

v1 → v2 of a 2 MB float32 safetensors file in which every weight moved a little.
The agent is stopped while the v2 rollout starts, so the delta the server
precomputes at rollout start is what it finds (the build would otherwise race its
next poll); the agent's own status report, read through a recording proxy,
shows how many bytes it downloaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferry.cli.demo import MODEL, NAMESPACE, AgentProcess, Operator, ServerProcess, wait_until
from tests.deltas_server._proxy import RecordingProxy
from tests.deltas_server.models import WEIGHTS, model_pair

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
WAIT_S = 60.0
SIZE = 2 << 20


@dataclass
class World:
    server: ServerProcess
    op: Operator
    proxy: RecordingProxy
    agent: AgentProcess
    v1: Path
    v2: Path

    def publish(self, weights: Path) -> int:
        sdk = self.op.sdk
        version = sdk.push_version(
            NAMESPACE,
            MODEL,
            [weights],
            format="safetensors",
            flavor="pytorch",
            signature={
                "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
                "outputs": [],
            },
            created_by="e2e",
            run_id=weights.parent.name,
            git_commit="0" * 40,
            hardware=["x86_64"],
        )
        for stage in ("Staging", "Production"):
            sdk.set_stage(NAMESPACE, MODEL, version.version, stage)
        return version.version

    def roll_out(self, version: int) -> str:
        rollout_id: str = self.op.create_rollout(version, [100])["id"]
        return rollout_id

    def completed(self, rollout_id: str) -> bool:
        return self.op.rollout_status(rollout_id)["rollout"]["state"] == "completed"

    def committed(self, rollout_id: str, version: int) -> dict[str, Any]:
        wait_until(
            lambda: (
                self.completed(rollout_id) and self.proxy.report("committed", version) is not None
            ),
            WAIT_S,
            f"the agent to commit v{version}",
            interval=0.25,
        )
        report = self.proxy.report("committed", version)
        assert report is not None
        return report

    def metric(self, name: str, outcome: str) -> float:
        text = httpx.get(f"{self.server.url}/metrics", timeout=10).text
        prefix = f'{name}{{outcome="{outcome}"}} '
        line = next((line for line in text.splitlines() if line.startswith(prefix)), None)
        return float(line.removeprefix(prefix)) if line else 0.0

    def installed_sha256(self) -> str:
        current = self.agent.workdir / "state" / "models" / "main" / "current" / WEIGHTS
        return hashlib.sha256(current.read_bytes()).hexdigest()

    def manifest_sha256(self, version: int) -> str:
        shown = self.op._call("GET", f"/models/{NAMESPACE}/{MODEL}/versions/{version}/manifest")
        signed = shown.get("signed", shown)
        (entry,) = [f for f in signed["files"] if f["path"] == WEIGHTS]
        sha: str = entry["sha256"]
        return sha


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    v1, v2 = model_pair(tmp_path / "bundles", size=SIZE)
    server = ServerProcess(
        tmp_path / "server", env={"FERRY_MQTT_ENABLED": "false", "FERRY_POLL_INTERVAL_S": "1"}
    ).start()
    op = Operator(server.url, server.admin_token)
    proxy = RecordingProxy(server.url).start()
    agent = AgentProcess(tmp_path / "agent", "delta-agent", poll_interval_s=0.5)
    try:
        op.sdk.create_namespace(NAMESPACE)
        op.sdk.create_model(NAMESPACE, MODEL, description="delta e2e")
        agent.enroll(proxy.url, op.enrollment_token(None))
        yield World(server, op, proxy, agent, v1, v2)
    finally:
        agent.stop()
        proxy.stop()
        op.close()
        server.stop()


def _to_v2_with_v2_delta_ready(world: World) -> tuple[int, str]:
    """v1 everywhere, then the v2 rollout started while the agent is down and its delta built."""
    v1, v2 = world.publish(world.v1), world.publish(world.v2)
    world.agent.start()
    world.committed(world.roll_out(v1), v1)
    world.agent.stop()
    rollout = world.roll_out(v2)
    wait_until(
        lambda: world.metric("ferry_delta_builds_total", "offered") >= 1,
        WAIT_S,
        "the delta precomputed at rollout start",
        interval=0.25,
    )
    assert world.metric("ferry_delta_requests_total", "not_ready") == 0  # nobody asked for it
    return v2, rollout


def test_agent_updates_through_the_precomputed_delta(world: World) -> None:
    v2, rollout = _to_v2_with_v2_delta_ready(world)
    world.agent.start()
    report = world.committed(rollout, v2)

    assert 0 < report["bytes_downloaded"] < 0.4 * SIZE, report  # the delta: ~30 % of the file
    assert world.metric("ferry_delta_requests_total", "served") == 1
    assert world.installed_sha256() == world.manifest_sha256(v2)


def test_a_corrupt_cached_delta_falls_back_to_the_full_file(world: World) -> None:
    v2, rollout = _to_v2_with_v2_delta_ready(world)
    # The delta lives in the blob store beside the artifacts; its pair record names it.
    (record,) = (world.server.data_dir / "blobs" / "records" / "deltas").glob("*/*.json")
    delta_sha256 = json.loads(record.read_text())["delta_sha256"]
    blob = world.server.data_dir / "blobs" / delta_sha256[:2] / delta_sha256[2:]
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    blob.write_bytes(bytes(raw))
    world.agent.start()
    report = world.committed(rollout, v2)

    assert world.metric("ferry_delta_requests_total", "served") == 1  # tried, then refused
    assert report["bytes_downloaded"] >= world.v2.stat().st_size, report
    assert world.installed_sha256() == world.manifest_sha256(v2)
