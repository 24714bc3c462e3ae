"""A real ``ferry server`` on the S3 backend, a real agent, moto as the bucket.

The agent downloads artifacts and deltas from the bucket through the server's
307 redirects to presigned URLs; the server sends no artifact byte itself. The
store stays untrusted: an object changed in the bucket is refused by the device,
which keeps its model. A server killed mid-upload leaves nothing at the address.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ferry.cli.demo import MODEL, NAMESPACE, AgentProcess, Operator, ServerProcess, wait_until
from ferry.client import VerificationError
from tests.deltas_server._proxy import RecordingProxy
from tests.deltas_server.models import model_pair
from tests.deltas_server.test_e2e import SIZE, WAIT_S, World
from tests.support.s3 import MotoServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MIB = 1024 * 1024


def _world(tmp_path: Path, moto: MotoServer, bucket: str, **env: str) -> Iterator[World]:
    v1, v2 = model_pair(tmp_path / "bundles", size=SIZE)
    server = ServerProcess(
        tmp_path / "server",
        env={
            "FERRY_MQTT_ENABLED": "false",
            "FERRY_POLL_INTERVAL_S": "1",
            **moto.env(bucket, FERRY_BLOB_PRESIGN_EXPIRY_S="60"),
            **env,
        },
    ).start()
    op = Operator(server.url, server.admin_token)
    proxy = RecordingProxy(server.url).start()
    agent = AgentProcess(tmp_path / "agent", "s3-agent", poll_interval_s=0.5)
    try:
        op.sdk.create_namespace(NAMESPACE)
        op.sdk.create_model(NAMESPACE, MODEL, description="s3 e2e")
        agent.enroll(proxy.url, op.enrollment_token(None))
        yield World(server, op, proxy, agent, v1, v2)
    finally:
        agent.stop()
        proxy.stop()
        op.close()
        server.stop()


@pytest.fixture
def world(tmp_path: Path, moto: MotoServer, bucket: str, s3_env: None) -> Iterator[World]:
    yield from _world(tmp_path, moto, bucket)


@pytest.fixture
def world_without_deltas(
    tmp_path: Path, moto: MotoServer, bucket: str, s3_env: None
) -> Iterator[World]:
    yield from _world(tmp_path, moto, bucket, FERRY_DELTAS_ENABLED="false")


def _kind(world: World, kind: str) -> float:
    text = httpx.get(f"{world.server.url}/metrics", timeout=10).text
    prefix = f'ferry_served_bytes_total{{kind="{kind}"}} '
    line = next((line for line in text.splitlines() if line.startswith(prefix)), None)
    return float(line.removeprefix(prefix)) if line else 0.0


def test_rollout_downloads_full_files_and_deltas_from_the_bucket(
    world: World, moto: MotoServer, bucket: str
) -> None:
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
    records = [k for k in moto.keys(bucket) if k.startswith("records/deltas/")]
    assert len(records) == 1  # the delta cache lives in the bucket too
    body = moto.client().get_object(Bucket=bucket, Key=records[0])["Body"].read()
    delta_sha256 = json.loads(body)["delta_sha256"]
    assert f"blobs/{delta_sha256[:2]}/{delta_sha256[2:]}" in moto.keys(bucket)

    world.agent.start()
    report = world.committed(rollout, v2)
    assert 0 < report["bytes_downloaded"] < 0.4 * SIZE, report  # the delta, from the bucket
    assert world.metric("ferry_delta_requests_total", "served") == 1
    assert world.installed_sha256() == world.manifest_sha256(v2)
    assert _kind(world, "full") == 0 and _kind(world, "delta") == 0  # every byte came from S3
    redirected = _redirects(world)
    assert (
        redirected["/blobs/{sha256}"] >= 1 and redirected["/deltas/{from_sha256}/{to_sha256}"] == 1
    )


def _redirects(world: World) -> dict[str, int]:
    """307 answers per route, from the server's access log."""
    counts = {"/blobs/{sha256}": 0, "/deltas/{from_sha256}/{to_sha256}": 0}
    for line in world.server.log_path.read_text().splitlines():
        if '"status": 307' in line:
            route = json.loads(line).get("route")
            if route in counts:
                counts[route] += 1
    return counts


def test_an_object_changed_in_the_bucket_is_refused_and_the_device_keeps_its_model(
    world_without_deltas: World, moto: MotoServer, bucket: str
) -> None:
    world = world_without_deltas
    v1, v2 = world.publish(world.v1), world.publish(world.v2)
    world.agent.start()
    world.committed(world.roll_out(v1), v1)
    before = world.installed_sha256()

    target = world.manifest_sha256(v2)
    key = f"blobs/{target[:2]}/{target[2:]}"
    original = moto.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    moto.client().put_object(Bucket=bucket, Key=key, Body=bytes(tampered))

    world.roll_out(v2)
    wait_until(
        lambda: world.proxy.report("failed", v2) is not None,
        WAIT_S,
        "the agent to refuse v2",
        interval=0.25,
    )
    report = world.proxy.report("failed", v2)
    assert report is not None and report["error_code"] == "hash_mismatch", report
    assert world.installed_sha256() == before  # still v1, untouched
    # The SDK follows the same redirect and refuses the same bytes.
    with pytest.raises(VerificationError) as info:
        world.op.sdk.download_version(NAMESPACE, MODEL, v2, world.v2.parent / "pulled")
    assert info.value.code == "hash_mismatch"
    pulled = world.op.sdk.download_version(NAMESPACE, MODEL, v1, world.v1.parent / "pulled-v1")
    assert pulled.bytes_downloaded == world.v1.stat().st_size


def test_a_server_killed_mid_upload_leaves_nothing_at_the_content_address(
    tmp_path: Path, moto: MotoServer, bucket: str, s3_env: None
) -> None:
    server = ServerProcess(
        tmp_path / "server", env={"FERRY_MQTT_ENABLED": "false", **moto.env(bucket)}
    ).start()
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    piece = os.urandom(MIB)
    total = 40
    sha256 = hashlib.sha256(piece * total).hexdigest()
    halfway = threading.Event()

    def body() -> Iterator[bytes]:
        for index in range(total):
            if index == 20:
                halfway.set()
                threading.Event().wait(30)  # stall: the server is killed meanwhile
            yield piece

    def upload() -> None:
        try:
            httpx.put(
                f"{server.url}/api/v1/blobs/{sha256}", content=body(), headers=headers, timeout=60
            )
        except httpx.HTTPError:
            pass  # the server died under it: expected

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    assert halfway.wait(WAIT_S)
    wait_until(lambda: moto.pending_uploads(bucket) != [], WAIT_S, "a multipart upload in flight")
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()

    key = f"blobs/{sha256[:2]}/{sha256[2:]}"
    assert key not in moto.keys(bucket)  # parts were sent, but nothing is visible
    assert moto.pending_uploads(bucket) == [key]  # the lifecycle rule's job (docs/deploy.md)

    server.start()  # the same upload again, whole: stored and visible
    r = httpx.put(
        f"{server.url}/api/v1/blobs/{sha256}", content=piece * total, headers=headers, timeout=120
    )
    assert r.status_code == 201, r.text
    assert key in moto.keys(bucket)
    server.stop()


@pytest.mark.parametrize("problem", ["missing bucket", "unreachable endpoint"])
def test_a_server_on_a_broken_store_says_why_in_one_line_and_on_readyz(
    tmp_path: Path, moto: MotoServer, s3_env: None, problem: str
) -> None:
    from tests.support.s3 import free_port

    env = moto.env("ferry-never-created")
    if problem == "unreachable endpoint":
        env = moto.env("any", FERRY_BLOB_S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    server = ServerProcess(tmp_path / "server", env={"FERRY_MQTT_ENABLED": "false", **env})
    server.start()  # /healthz answers: the process is up, only not ready
    try:
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
        assert ready.status_code == 503
        reason = ready.json()["checks"]["blobs"]
        expected = (
            "s3 bucket 'ferry-never-created' does not exist"
            if problem == "missing bucket"
            else "s3 store unreachable"
        )
        assert reason.startswith(expected), reason
        log = server.log_path.read_text()
        assert log.count("blob store not ready") == 1 and expected in log
        assert "Traceback" not in log
    finally:
        server.stop()
