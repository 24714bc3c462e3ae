"""deploy/nginx/egress.conf in front of a real ``ferry server`` on the local blob store.

The server only authorises (``FERRY_BLOB_ACCEL_REDIRECT``); nginx serves the
blob and delta bytes, ranges included, from an ``internal`` location that cannot
be requested from outside. nginx runs from this repository's config file with
only ``listen``, the upstream ``server`` and the ``alias`` rewritten, on a free
port with its own prefix and temp folders.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ferry.cli.demo import ServerProcess, wait_until
from tests.e2e._replicas import nginx_binary
from tests.support.mosquitto import free_port
from tests.support.nginx_egress import egress_conf, start_nginx, stop_nginx

pytestmark = [pytest.mark.e2e]
API = "/api/v1"


@dataclass
class Egress:
    server: ServerProcess
    url: str
    headers: dict[str, str]

    def served_bytes(self) -> float:
        text = httpx.get(f"{self.server.url}/metrics", timeout=10).text
        line = next(
            x for x in text.splitlines() if x.startswith('ferry_served_bytes_total{kind="full"}')
        )
        return float(line.rsplit(" ", 1)[1])


@pytest.fixture
def egress(tmp_path: Path) -> Iterator[Egress]:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    server = ServerProcess(
        tmp_path / "data",
        env={"FERRY_MQTT_ENABLED": "false", "FERRY_BLOB_ACCEL_REDIRECT": "/_ferry_blobs/"},
    ).start()
    port = free_port()
    conf = egress_conf(tmp_path / "nginx", port, server.http_port, server.data_dir / "blobs")
    nginx = start_nginx(binary, conf)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, 20, f"nginx on {port}")
        yield Egress(server, url, {"Authorization": f"Bearer {server.admin_token}"})
    finally:
        stop_nginx(nginx)
        server.stop()


def _upload(egress: Egress, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    r = httpx.put(
        f"{egress.url}{API}/blobs/{sha}", content=data, headers=egress.headers, timeout=60
    )
    assert r.status_code == 201, r.text
    return sha


def test_nginx_sends_the_blob_and_its_ranges_after_the_server_authorised(egress: Egress) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    sha = _upload(egress, data)
    full = httpx.get(f"{egress.url}{API}/blobs/{sha}", headers=egress.headers)
    assert full.status_code == 200 and full.content == data
    assert "x-accel-redirect" not in full.headers  # nginx consumed it
    assert full.headers["etag"] == f'"{sha}"' and "immutable" in full.headers["cache-control"]
    part = httpx.get(
        f"{egress.url}{API}/blobs/{sha}", headers={**egress.headers, "Range": "bytes=1000-1999"}
    )
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = httpx.get(
        f"{egress.url}{API}/blobs/{sha}", headers={**egress.headers, "Range": "bytes=-10"}
    )
    assert tail.status_code == 206 and tail.content == data[-10:]
    assert egress.served_bytes() == 0  # not one byte went through Python


def test_unauthorised_and_unknown_downloads_are_refused_by_the_server(egress: Egress) -> None:
    sha = _upload(egress, b"private weights")
    anonymous = httpx.get(f"{egress.url}{API}/blobs/{sha}")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthenticated"
    wrong = httpx.get(f"{egress.url}{API}/blobs/{sha}", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and b"private" not in wrong.content
    unknown = httpx.get(f"{egress.url}{API}/blobs/{'0' * 64}", headers=egress.headers)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    outside = httpx.get(
        f"{egress.url}{API}/blobs/{sha}", headers={**egress.headers, "Range": "bytes=99999-"}
    )
    assert outside.status_code == 416


def test_the_internal_location_cannot_be_requested_from_outside(egress: Egress) -> None:
    sha = _upload(egress, b"weights behind the internal location")
    for path in (
        f"/_ferry_blobs/{sha[:2]}/{sha[2:]}",
        f"/_ferry_blobs/../_ferry_blobs/{sha[:2]}/{sha[2:]}",
        f"/_ferry_blobs/%2e%2e/{sha[:2]}/{sha[2:]}",
    ):
        r = httpx.get(f"{egress.url}{path}", headers=egress.headers)
        assert r.status_code in (400, 404), path
        assert b"weights behind" not in r.content, path


def test_a_cached_delta_is_sent_by_nginx_too(egress: Egress) -> None:
    old = os.urandom(400_000)
    new = bytearray(old)
    new[1000:1010] = b"0123456789"
    from_sha, to_sha = _upload(egress, old), _upload(egress, bytes(new))
    url = f"{egress.url}{API}/deltas/{from_sha}/{to_sha}"

    def ready() -> bool:
        return httpx.get(url, headers=egress.headers).status_code == 200

    wait_until(ready, 60, "the delta built in the background")
    r = httpx.get(url, headers=egress.headers)
    delta_sha = hashlib.sha256(r.content).hexdigest()
    assert r.headers["x-ferry-delta-sha256"] == delta_sha
    assert r.headers["x-ferry-delta-size"] == str(len(r.content))
    assert r.headers["content-type"] == "application/vnd.ferry.delta"
    assert 0 < len(r.content) < 0.1 * len(new)
    assert (
        egress.server.data_dir / "blobs" / delta_sha[:2] / delta_sha[2:]
    ).read_bytes() == r.content
