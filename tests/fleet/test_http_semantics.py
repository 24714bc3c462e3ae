"""HTTP semantics that caches and proxies rely on: conditional requests on the
content-addressed resources (blobs, manifests, deltas), HEAD wherever GET is served,
and an Allow header on 405 naming every method the path serves."""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path

import pytest

from tests.deltas_server.models import model_pair
from tests.fleet.harness import API, Fleet

SHA = "0" * 64


def _blob(fleet: Fleet) -> str:
    data = secrets.token_bytes(1000)
    sha = hashlib.sha256(data).hexdigest()
    assert (
        fleet.client.put(f"{API}/blobs/{sha}", content=data, headers=fleet.admin).status_code == 201
    )
    return sha


def _delta_url(fleet: Fleet, tmp_path: Path) -> str:
    old, new = model_pair(tmp_path / "model", size=256 << 10)
    shas = []
    for path in (old, new):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        fleet.client.put(f"{API}/blobs/{sha}", content=path.read_bytes(), headers=fleet.admin)
        shas.append(sha)
    url = f"{API}/deltas/{shas[0]}/{shas[1]}"
    fleet.client.get(url, headers=fleet.admin)  # queues the build
    portal = fleet.client.portal
    assert portal is not None
    portal.call(fleet.app.state.deltas.wait_idle)
    return url


def _resources(fleet: Fleet, tmp_path: Path) -> dict[str, str]:
    version = fleet.version()
    return {
        "blob": f"{API}/blobs/{_blob(fleet)}",
        "manifest": f"{API}/manifests/{fleet.manifest_sha('vision', 'det', version)}",
        "delta": _delta_url(fleet, tmp_path),
    }


@pytest.mark.parametrize("kind", ["blob", "manifest", "delta"])
def test_conditional_requests_on_content_addressed_resources(
    fleet: Fleet, tmp_path: Path, kind: str
) -> None:
    url = _resources(fleet, tmp_path)[kind]
    full = fleet.client.get(url, headers=fleet.admin)
    assert full.status_code == 200, full.text
    etag = full.headers["etag"]
    for method in ("GET", "HEAD"):
        for condition in (etag, f"W/{etag}", f'"{SHA}", {etag}', "*"):
            cached = fleet.client.request(
                method, url, headers={**fleet.admin, "If-None-Match": condition}
            )
            assert (cached.status_code, cached.content) == (304, b""), (method, condition)
            assert cached.headers["etag"] == etag
        stale = fleet.client.request(
            method, url, headers={**fleet.admin, "If-None-Match": f'"{SHA}"'}
        )
        assert stale.status_code == 200
    moved = fleet.client.get(url, headers={**fleet.admin, "If-Match": f'"{SHA}"'})
    assert moved.status_code == 412
    assert moved.json()["error"] == {
        "code": "precondition_failed",
        "details": {"etag": etag},
        "message": moved.json()["error"]["message"],
    }
    weak = fleet.client.get(url, headers={**fleet.admin, "If-Match": f"W/{etag}"})
    assert weak.status_code == 412  # If-Match compares strongly
    same = fleet.client.get(url, headers={**fleet.admin, "If-Match": etag})
    assert same.status_code == 200 and same.content == full.content


def _concrete(path: str) -> str:
    """A request path for a route template: every parameter filled with something valid."""
    return re.sub(r"\{[^}]+\}", lambda m: SHA if "sha" in m.group(0) else "1", path)


def _methods_by_path(fleet: Fleet) -> dict[str, set[str]]:
    """Every documented path and the methods it serves, HEAD wherever GET is."""
    paths = fleet.client.get("/openapi.json").json()["paths"]
    methods = {path: {m.upper() for m in operations} for path, operations in paths.items()}
    for allowed in methods.values():
        if "GET" in allowed:
            allowed.add("HEAD")
    return methods


def test_head_is_served_wherever_get_is(fleet: Fleet) -> None:
    paths = [path for path, allowed in _methods_by_path(fleet).items() if "GET" in allowed]
    assert len(paths) > 25
    for path in [*paths, "/healthz", "/metrics"]:
        url = _concrete(path)
        got = fleet.client.get(url, headers=fleet.admin)
        head = fleet.client.head(url, headers=fleet.admin)
        assert head.status_code == got.status_code, path
        assert head.content == b"", path


def test_head_keeps_the_get_headers(fleet: Fleet) -> None:
    got = fleet.client.get(f"{API}/keyring", headers=fleet.admin)
    head = fleet.client.head(f"{API}/keyring", headers=fleet.admin)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))


def test_405_names_every_allowed_method(fleet: Fleet) -> None:
    """Starlette names only the first route's methods: PUT /blobs/x said ``Allow: GET``."""
    checked = 0
    for path, allowed in _methods_by_path(fleet).items():
        r = fleet.client.request("PATCH", _concrete(path), headers=fleet.admin)
        if "PATCH" in allowed:
            continue
        assert r.status_code == 405, path
        # Every method of the template; a sibling template matching the same URL (GET
        # /rollouts/{id} for /rollouts/plan) may add its own.
        assert allowed <= set(r.headers["allow"].split(", ")), path
        assert r.json()["error"]["code"] == "method_not_allowed"
        checked += 1
    assert checked > 20
    blob = fleet.client.request("PATCH", f"{API}/blobs/{SHA}", headers=fleet.admin)
    assert blob.headers["allow"] == "GET, HEAD, PUT"
