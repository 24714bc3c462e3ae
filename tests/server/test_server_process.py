"""The real `ferry server` process over HTTP: first start, upload/download, an upload
cut off mid-stream leaves no blob and no version, JSON logs without secrets."""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.server.conftest import API, ServerProcess, version_body


def _client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.base, headers=server.admin, timeout=30)


def _interrupted_put(
    server: ServerProcess, sha: str, sent: bytes, declared: int, blob_dir: Path
) -> None:
    """Send headers and part of the body, wait until the server is writing a temp
    file, then drop the connection."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        head = (
            f"PUT {API}/blobs/{sha} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {server.admin['Authorization']}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
        )
        sock.sendall(head.encode() + sent)
        deadline = time.monotonic() + 20
        while not _leftovers(blob_dir) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [p.name[:8] for p in _leftovers(blob_dir)] == [".upload-"]


def _leftovers(blob_dir: Path) -> list[Path]:
    return [p for p in blob_dir.rglob("*") if p.is_file()] if blob_dir.exists() else []


def test_first_start_creates_keys_and_prints_the_admin_token(server_process: ServerProcess) -> None:
    token = (server_process.data_dir / "admin-token").read_text().strip()
    assert token.startswith("fry_") and token in server_process.output()
    for role in ("root", "bundles", "director"):
        key = server_process.data_dir / "keys" / f"{role}.pem"
        assert key.stat().st_mode & 0o777 == 0o600
    with _client(server_process) as c:
        assert c.get(f"{API}/whoami").json()["role"] == "admin"
        assert c.get(f"{API}/keyring").json()["signed"]["version"] == 1


def test_interrupted_upload_leaves_nothing(server_process: ServerProcess) -> None:
    data = secrets.token_bytes(4 * 1024 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    blob_dir = server_process.data_dir / "blobs"
    _interrupted_put(server_process, sha, data[: 1024 * 1024], len(data), blob_dir)
    with _client(server_process) as c:
        deadline = time.monotonic() + 20
        while _leftovers(blob_dir) and time.monotonic() < deadline:
            time.sleep(0.05)  # the server notices the disconnect and removes its temp file
        assert _leftovers(blob_dir) == []
        assert c.head(f"{API}/blobs/{sha}").status_code == 404
        c.post(f"{API}/namespaces", json={"name": "vision"})
        c.post(f"{API}/models", json={"namespace": "vision", "name": "resnet"})
        body = version_body([{"path": "m.bin", "sha256": sha, "size": len(data)}])
        r = c.post(f"{API}/models/vision/resnet/versions", json=body)
        assert r.status_code == 409
        assert c.get(f"{API}/models/vision/resnet/versions").json() == []
        assert c.put(f"{API}/blobs/{sha}", content=data).status_code == 201
        assert c.post(f"{API}/models/vision/resnet/versions", json=body).json()["version"] == 1
        got = c.get(f"{API}/blobs/{sha}", headers={"Range": "bytes=1048576-"})
        assert got.status_code == 206 and got.content == data[1048576:]


def test_metrics_and_json_logs_without_secrets(server_process: ServerProcess) -> None:
    data = secrets.token_bytes(1000)
    with _client(server_process) as c:
        c.put(f"{API}/blobs/{hashlib.sha256(data).hexdigest()}", content=data)
        c.get(f"{API}/whoami")
        text = httpx.get(f"{server_process.base}/metrics").text
    assert "ferry_blob_upload_bytes_total 1000.0" in text
    assert 'ferry_http_requests_total{method="GET",route="/whoami",status="200"}' in text
    token = server_process.admin["Authorization"].split()[1]
    lines = [line for line in server_process.output().splitlines() if line.startswith("{")]
    requests = [json.loads(line) for line in lines if '"msg": "request"' in line]
    assert any(r["route"] == "/whoami" and r["actor"] == "bootstrap-admin" for r in requests)
    assert all(token not in line for line in lines)


def test_restart_keeps_state_and_does_not_mint_another_admin(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path / "d")
    token = first.admin
    first.stop()
    second = ServerProcess(tmp_path / "d")
    try:
        assert second.admin == token
        assert "created admin token" not in second.output()
        with httpx.Client(base_url=second.base, headers=token) as c:
            assert c.get(f"{API}/whoami").status_code == 200
            assert c.get(f"{API}/keyring").json()["signed"]["version"] == 1
    finally:
        second.stop()


def _signer(base: str, credential: str) -> str:
    r = httpx.get(
        f"{base}{API}/device/desired-state",
        headers={"Authorization": f"Bearer {credential}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["signatures"][0]["keyid"])


def _cache_hits(server: ServerProcess) -> float:
    metrics = httpx.get(f"{server.base}/metrics", timeout=10).text
    line = next(
        line for line in metrics.splitlines() if line.startswith("ferry_checkin_cache_hits_total ")
    )
    return float(line.split()[1])


def test_a_director_key_rotated_on_the_host_reaches_every_check_in_at_once(
    server_process: ServerProcess,
) -> None:
    """`ferry keys rotate` is another process writing the same database and key files: the
    running server must stop serving documents signed by the revoked key within a poll."""
    with _client(server_process) as c:
        c.post(f"{API}/namespaces", json={"name": "vision"})
        token = c.post(
            f"{API}/enrollment-tokens", json={"namespace": "vision", "name": "t"}
        ).json()["token"]
        device = c.post(
            f"{API}/device/enroll",
            json={"enrollment_token": token, "device_id": "cam-1", "hardware": "x86_64"},
        ).json()
    time.sleep(1.5)  # let the epoch poller (every 0.5 s) see the enrolment's own bump first
    old = _signer(server_process.base, device["credential"])
    hits = _cache_hits(server_process)
    assert _signer(server_process.base, device["credential"]) == old
    assert _cache_hits(server_process) == hits + 1  # now served from the check-in cache
    rotated = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferry.cli.server_cmds",
            "keys",
            "rotate",
            "--role",
            "director",
            "--data-dir",
            str(server_process.data_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert rotated.returncode == 0, rotated.stderr
    deadline = time.monotonic() + 15  # the epoch poll runs every 0.5 s; generous on a busy host
    while (
        signer := _signer(server_process.base, device["credential"])
    ) == old and time.monotonic() < deadline:
        time.sleep(0.1)
    with _client(server_process) as c:
        keyring = c.get(f"{API}/keyring").json()["signed"]
    assert signer != old and keyring["roles"]["director"]["keyids"] == [signer]
