"""Versions: monotonic numbers (also under concurrency), immutability, idempotent
re-register, blobs required, tags and aliases."""

from __future__ import annotations

import secrets
import threading

import httpx

from tests.server.conftest import API, Harness, version_body

VERSIONS = f"{API}/models/vision/resnet/versions"


def test_versions_are_numbered_one_two_three(h: Harness) -> None:
    numbers = [h.register()["version"] for _ in range(3)]
    assert numbers == [1, 2, 3]
    listed = h.client.get(VERSIONS, headers=h.admin).json()
    assert [v["version"] for v in listed] == [3, 2, 1]
    model = h.client.get(f"{API}/models/vision/resnet", headers=h.admin).json()
    assert model["latest_version"] == 3


def test_same_files_register_idempotently(h: Harness) -> None:
    data = b"weights"
    first = h.register(data)
    again = h.register(data, expect=200)
    assert again["version"] == first["version"] == 1
    assert again["manifest_sha256"] == first["manifest_sha256"]
    assert h.register()["version"] == 2


def test_registration_needs_every_blob_uploaded_first(h: Harness) -> None:
    missing = "b" * 64
    body = version_body([{"path": "model.onnx", "sha256": missing, "size": 3}])
    r = h.client.post(VERSIONS, json=body, headers=h.admin)
    assert r.status_code == 409 and r.json()["error"]["details"] == {"missing": [missing]}
    assert h.client.get(VERSIONS, headers=h.admin).json() == []
    assert h.register()["version"] == 1


def test_declared_size_must_match_the_blob(h: Harness) -> None:
    sha = h.upload(b"four")
    body = version_body([{"path": "m.bin", "sha256": sha, "size": 5}])
    r = h.client.post(VERSIONS, json=body, headers=h.admin)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


def test_unsafe_paths_and_missing_metadata_are_422(h: Harness) -> None:
    sha = h.upload(b"x")
    bad_path = version_body([{"path": "../etc/passwd", "sha256": sha, "size": 1}])
    no_commit = version_body([{"path": "m", "sha256": sha, "size": 1}])
    del no_commit["metadata"]["git_commit"]
    float_signature = version_body([{"path": "m", "sha256": sha, "size": 1}])
    float_signature["signature"] = {"scale": 0.5}
    for body in (bad_path, no_commit, float_signature):
        r = h.client.post(VERSIONS, json=body, headers=h.admin)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "validation_error"


def test_versions_are_immutable(h: Harness) -> None:
    v = h.register()
    for method in ("PUT", "PATCH", "DELETE"):
        r = h.client.request(method, f"{VERSIONS}/1", headers=h.admin, json={"files": []})
        assert r.status_code == 405, method
    h.client.post(f"{VERSIONS}/1/tags", json={"add": ["ok"]}, headers=h.admin)
    h.client.post(f"{VERSIONS}/1/stage", json={"stage": "Staging"}, headers=h.admin)
    after = h.client.get(f"{VERSIONS}/1", headers=h.admin).json()
    for field in ("files", "manifest_sha256", "metadata", "signature", "created_at"):
        assert after[field] == v[field]


def test_tags_and_aliases(h: Harness) -> None:
    h.register(tags=["resnet"])
    h.register()
    r = h.client.post(
        f"{VERSIONS}/1/tags",
        json={"add": ["prod-candidate"], "remove": ["resnet"]},
        headers=h.admin,
    )
    assert r.json()["tags"] == ["prod-candidate"]
    r = h.client.put(
        f"{API}/models/vision/resnet/aliases/champion", json={"version": 1}, headers=h.admin
    )
    assert r.status_code == 200 and r.json() == {"alias": "champion", "version": 1}
    assert h.client.get(f"{VERSIONS}/champion", headers=h.admin).json()["version"] == 1
    h.client.put(
        f"{API}/models/vision/resnet/aliases/champion", json={"version": 2}, headers=h.admin
    )
    model = h.client.get(f"{API}/models/vision/resnet", headers=h.admin).json()
    assert model["aliases"] == {"champion": 2}
    assert (
        h.client.delete(f"{API}/models/vision/resnet/aliases/champion", headers=h.admin).status_code
        == 204
    )
    assert h.client.get(f"{VERSIONS}/champion", headers=h.admin).status_code == 404


def test_concurrent_registrations_get_distinct_consecutive_numbers(
    live_server: tuple[str, dict[str, str]],
) -> None:
    base, admin = live_server
    with httpx.Client(base_url=base, headers=admin) as c:
        c.post(f"{API}/namespaces", json={"name": "vision"})
        c.post(f"{API}/models", json={"namespace": "vision", "name": "resnet"})
    numbers: list[int] = []
    errors: list[str] = []

    def worker() -> None:
        with httpx.Client(base_url=base, headers=admin, timeout=60) as c:
            for _ in range(4):
                data = secrets.token_bytes(32)
                import hashlib

                sha = hashlib.sha256(data).hexdigest()
                c.put(f"{API}/blobs/{sha}", content=data)
                r = c.post(VERSIONS, json=version_body([{"path": "m", "sha256": sha, "size": 32}]))
                if r.status_code != 201:
                    errors.append(r.text)
                else:
                    numbers.append(r.json()["version"])

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(numbers) == list(range(1, 25))
