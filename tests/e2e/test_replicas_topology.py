"""The compose topology, as real processes: a rollout through nginx, two replicas on one
PostgreSQL and one S3-compatible bucket (moto, as MinIO in compose), Mosquitto with
per-replica logins, real agents and simulated devices downloading from the bucket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.cli.demo import FINAL_STATES, _installed, wait_until
from tests.e2e._replicas import Topology, nginx_binary
from tests.server.conftest import pg_url  # noqa: F401  (scratch PostgreSQL database fixture)
from tests.support.mosquitto import require_mosquitto
from tests.support.s3 import MotoServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def topology(tmp_path: Path, pg_url: str, moto: MotoServer) -> Iterator[Topology]:  # noqa: F811
    require_mosquitto()
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    stack = Topology(tmp_path, pg_url, blob_env=moto.env(moto.bucket())).start()
    try:
        yield stack
    finally:
        stack.stop()


def test_a_rollout_through_the_load_balancer_reaches_every_device_on_both_replicas(
    topology: Topology, tmp_path: Path
) -> None:
    op = topology.op
    assert op is not None
    (version,) = op.publish_model(tmp_path / "bundles", [False], size=65536)
    token = op.enrollment_token(None)
    agents = topology.add_agents(2, token)
    topology.simulate(20, token)
    wait_until(lambda: op.fleet_status()["devices"] >= 22, 120, "22 enrolled devices")
    rollout = op.create_rollout(version, [50, 100], max_failure_pct=20, min_success_pct=90)
    status = op.wait_rollout(
        rollout["id"], lambda s: s["rollout"]["state"] in FINAL_STATES, timeout=240
    )
    assert status["rollout"]["state"] == "completed", status
    wait_until(lambda: all(_installed(a) == version for a in agents), 60, "agents on v1")
    view = topology.server_view()
    assert set(view.values()) == {version}, view
    # Both replicas served devices: the load balancer spread the check-ins.
    for server in topology.servers:
        assert "/api/v1/device/desired-state" in server.log_path.read_text()
    # The bytes came from the bucket: downloads were answered with redirects.
    redirects = [
        line
        for server in topology.servers
        for line in server.log_path.read_text().splitlines()
        if '"status": 307' in line and json.loads(line).get("route") == "/blobs/{sha256}"
    ]
    assert len(redirects) >= 2, "each agent was redirected to the bucket at least once"
