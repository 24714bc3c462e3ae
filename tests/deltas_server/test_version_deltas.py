"""GET /api/v1/models/{ns}/{name}/versions/{ref}/deltas: what the server offers between a
version and its neighbours, per file — ready with its size, building, not built yet, or
not worth sending — read from the cache and the build queue, never building anything."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ferry.server.deltas.jobs import DeltaJobs
from tests.deltas_server.models import WEIGHTS, model_pair, random_pair
from tests.fleet.harness import API, Fleet
from tests.server.conftest import Harness, version_body

DELTA = API + "/deltas/{}/{}"
LIST = API + "/models/vision/det/versions/{}/deltas"


def _register(fleet: Fleet, files: dict[str, bytes]) -> int:
    specs = []
    for path, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        r = fleet.client.put(f"{API}/blobs/{sha}", content=data, headers=fleet.admin)
        assert r.status_code in (200, 201), r.text
        specs.append({"path": path, "sha256": sha, "size": len(data)})
    r = fleet.client.post(
        f"{API}/models/vision/det/versions", json=version_body(specs), headers=fleet.admin
    )
    assert r.status_code == 201, r.text
    return int(r.json()["version"])


def _jobs(fleet: Fleet) -> DeltaJobs:
    jobs: DeltaJobs = fleet.app.state.deltas
    return jobs


def _listing(fleet: Fleet, ref: str, **params: Any) -> dict[str, Any]:
    r = fleet.client.get(LIST.format(ref), params=params, headers=fleet.admin)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _states(body: dict[str, Any]) -> dict[tuple[int, int, str], str]:
    return {(d["from_version"], d["to_version"], d["path"]): d["state"] for d in body["deltas"]}


@pytest.fixture
def versions(fleet: Fleet, tmp_path: Path) -> tuple[bytes, bytes, bytes]:
    """v1, v2 (the fine-tune of v1, same labels) and v3 (unrelated weights, new labels)."""
    old, new = model_pair(tmp_path / "model", size=512 << 10)
    unrelated = random_pair(tmp_path / "random", size=64 << 10)[0].read_bytes()
    weights = (old.read_bytes(), new.read_bytes(), unrelated)
    for data, labels in zip(weights, (b"cat\n", b"cat\n", b"cat\ndog\n"), strict=True):
        _register(fleet, {WEIGHTS: data, "labels.txt": labels})
    return weights


def test_every_changed_file_both_ways_and_nothing_is_built_by_asking(
    fleet: Fleet, versions: tuple[bytes, bytes, bytes]
) -> None:
    body = _listing(fleet, "2")
    assert (body["version"], body["enabled"], body["max_fraction"]) == (2, True, 0.6)
    assert (body["versions_total"], body["versions_shown"]) == (2, 2)
    assert _states(body) == {
        (1, 2, WEIGHTS): "not_built",  # labels.txt is the same in v1 and v2: no delta
        (3, 2, "labels.txt"): "not_built",
        (3, 2, WEIGHTS): "not_built",
        (2, 1, WEIGHTS): "not_built",
        (2, 3, "labels.txt"): "not_built",
        (2, 3, WEIGHTS): "not_built",
    }
    first = body["deltas"][0]
    assert first["from_sha256"] == hashlib.sha256(versions[0]).hexdigest()
    assert first["to_sha256"] == hashlib.sha256(versions[1]).hexdigest()
    assert (first["size"], first["delta_size"]) == (len(versions[1]), None)
    assert _jobs(fleet)._tasks == {}, "a listing never queues a build"


def test_a_build_shows_as_building_then_ready_with_its_size_or_not_worth_it(
    fleet: Fleet, versions: tuple[bytes, bytes, bytes]
) -> None:
    jobs, portal = _jobs(fleet), fleet.client.portal
    assert portal is not None
    sha = [hashlib.sha256(w).hexdigest() for w in versions]
    held = 0
    while not jobs._slots.locked():  # every build slot taken: queued builds wait
        portal.call(jobs._slots.acquire)
        held += 1
    for old, new in ((0, 1), (1, 2)):
        fleet.client.get(DELTA.format(sha[old], sha[new]), headers=fleet.admin)
    queued = _states(_listing(fleet, "2"))
    assert queued[(1, 2, WEIGHTS)] == queued[(2, 3, WEIGHTS)] == "building"
    assert queued[(2, 1, WEIGHTS)] == "not_built"
    for _ in range(held):
        jobs._slots.release()
    portal.call(jobs.wait_idle)

    body = _listing(fleet, "2")
    built = {(d["from_version"], d["to_version"], d["path"]): d for d in body["deltas"]}
    ready = built[(1, 2, WEIGHTS)]
    assert ready["state"] == "ready"
    assert 0 < ready["delta_size"] < 0.6 * len(versions[1])
    served = fleet.client.get(DELTA.format(sha[0], sha[1]), headers=fleet.admin)
    assert (len(served.content), hashlib.sha256(served.content).hexdigest()) == (
        ready["delta_size"],
        ready["delta_sha256"],
    )
    assert built[(2, 3, WEIGHTS)]["state"] == "not_worth_it"  # random bytes: the full file
    assert built[(2, 3, WEIGHTS)]["delta_size"] is None
    assert built[(2, 1, WEIGHTS)]["state"] == "not_built"


def test_nearest_versions_only_and_a_scoped_viewer(
    fleet: Fleet, versions: tuple[bytes, bytes, bytes]
) -> None:
    one = _listing(fleet, "1", versions=1)
    assert (one["versions_total"], one["versions_shown"]) == (2, 1)
    assert {(d["from_version"], d["to_version"]) for d in one["deltas"]} == {(2, 1), (1, 2)}
    viewer = fleet.token("viewer", ["vision"])
    assert fleet.client.get(LIST.format("1"), headers=viewer).status_code == 200
    stranger = fleet.token("viewer", ["audio"])
    r = fleet.client.get(LIST.format("1"), headers=stranger)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    missing = fleet.client.get(LIST.format("9"), headers=fleet.admin)
    assert missing.status_code == 404
    bad = fleet.client.get(LIST.format("1"), params={"versions": 0}, headers=fleet.admin)
    assert bad.status_code == 422


def test_with_deltas_disabled_it_says_so(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory(deltas_enabled=False)
    h.namespace()
    h.model()
    h.register(b"one")
    h.register(b"two")
    r = h.client.get(f"{API}/models/vision/resnet/versions/2/deltas", headers=h.admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["enabled"], body["max_fraction"], body["deltas"]) == (False, None, [])
    assert body["versions_total"] == 1
