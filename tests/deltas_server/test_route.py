"""GET /api/v1/deltas/{from}/{to} in-process: 404/422 answers, background builds, precompute.

The app is real (tmp SQLite, real spawn-context build pool); a test waits for the
queued builds with `DeltaJobs.wait_idle` through the TestClient's portal instead
of sleeping.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.protocol.delta import apply_delta_file
from ferry.server.core.settings import Settings
from ferry.server.deltas.jobs import DeltaJobs, rollout_pairs
from tests.deltas_server.models import WEIGHTS, model_pair, random_pair
from tests.fleet.harness import API, Fleet
from tests.rollouts.helpers import commit
from tests.server.conftest import Harness

DELTA = API + "/deltas/{}/{}"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _upload(fleet: Fleet, path: Path) -> str:
    sha = _sha(path)
    r = fleet.client.put(f"{API}/blobs/{sha}", content=path.read_bytes(), headers=fleet.admin)
    assert r.status_code in (200, 201), r.text
    return sha


def _publish(fleet: Fleet, weights: Path) -> int:
    """A Production version of vision/det holding ``weights`` as model.safetensors."""
    sha = _upload(fleet, weights)
    body = {
        "files": [{"path": WEIGHTS, "sha256": sha, "size": weights.stat().st_size}],
        "format": "safetensors",
        "flavor": "pytorch",
        "signature": {
            "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3]}],
            "outputs": [],
        },
        "hardware": [],
        "metadata": {"created_by": "ci", "run_id": "r", "git_commit": "c"},
    }
    r = fleet.client.post(f"{API}/models/vision/det/versions", json=body, headers=fleet.admin)
    assert r.status_code == 201, r.text
    number: int = r.json()["version"]
    for stage in ("Staging", "Production"):
        r = fleet.client.post(
            f"{API}/models/vision/det/versions/{number}/stage",
            json={"stage": stage},
            headers=fleet.admin,
        )
        assert r.status_code == 200, r.text
    return number


def _jobs(fleet: Fleet) -> DeltaJobs:
    jobs: DeltaJobs = fleet.app.state.deltas
    return jobs


def _wait_builds(fleet: Fleet) -> None:
    portal = fleet.client.portal
    assert portal is not None
    portal.call(_jobs(fleet).wait_idle)


def _error(response: Any) -> str:
    code: str = response.json()["error"]["code"]
    return code


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return model_pair(tmp_path / "model", size=512 << 10)


@pytest.fixture
def device(fleet: Fleet) -> Iterator[dict[str, str]]:
    (agent,) = fleet.devices(1)
    yield agent.headers


def test_unknown_blob_is_404_not_found(fleet: Fleet, pair: tuple[Path, Path]) -> None:
    known = _upload(fleet, pair[0])
    for url in (DELTA.format(known, "f" * 64), DELTA.format("f" * 64, known)):
        r = fleet.client.get(url, headers=fleet.admin)
        assert (r.status_code, _error(r)) == (404, "not_found")
    assert _jobs(fleet)._tasks == {}  # nothing queued for blobs we do not have


@pytest.mark.parametrize("bad", ["A" * 64, "a" * 63, "g" * 64, "a" * 65])
def test_malformed_digest_is_422(fleet: Fleet, bad: str) -> None:
    for url in (DELTA.format(bad, "a" * 64), DELTA.format("a" * 64, bad)):
        r = fleet.client.get(url, headers=fleet.admin)
        assert (r.status_code, _error(r)) == (422, "validation_error")


def test_first_request_is_not_ready_then_the_built_delta_rebuilds_the_new_file(
    fleet: Fleet, pair: tuple[Path, Path], device: dict[str, str], tmp_path: Path
) -> None:
    old, new = pair
    url = DELTA.format(_upload(fleet, old), _upload(fleet, new))
    first = fleet.client.get(url, headers=device)
    assert (first.status_code, _error(first)) == (404, "delta_not_ready")
    _wait_builds(fleet)

    r = fleet.client.get(url, headers=device)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.ferry.delta"
    assert (
        int(r.headers["content-length"]) == int(r.headers["x-ferry-delta-size"]) == len(r.content)
    )
    assert r.headers["x-ferry-delta-sha256"] == hashlib.sha256(r.content).hexdigest()
    assert len(r.content) < 0.6 * new.stat().st_size
    out = tmp_path / "rebuilt"
    apply_delta_file(old, [r.content], out, new.stat().st_size, _sha(new))
    assert out.read_bytes() == new.read_bytes()
    metrics = fleet.client.get("/metrics").text
    assert 'ferry_delta_requests_total{outcome="not_ready"} 1.0' in metrics
    assert 'ferry_delta_requests_total{outcome="served"} 1.0' in metrics
    assert 'ferry_delta_builds_total{outcome="offered"} 1.0' in metrics


def test_viewer_may_read_a_delta_and_range_is_honoured(
    fleet: Fleet, pair: tuple[Path, Path]
) -> None:
    url = DELTA.format(_upload(fleet, pair[0]), _upload(fleet, pair[1]))
    fleet.client.get(url, headers=fleet.admin)
    _wait_builds(fleet)
    viewer = fleet.token("viewer")
    whole = fleet.client.get(url, headers=viewer)
    part = fleet.client.get(url, headers={**viewer, "Range": "bytes=10-19"})
    assert whole.status_code == 200 and part.status_code == 206
    assert part.content == whole.content[10:20]


def test_a_delta_not_worth_sending_is_404(fleet: Fleet, tmp_path: Path) -> None:
    old, new = random_pair(tmp_path / "random")
    url = DELTA.format(_upload(fleet, old), _upload(fleet, new))
    assert _error(fleet.client.get(url, headers=fleet.admin)) == "delta_not_ready"
    _wait_builds(fleet)
    r = fleet.client.get(url, headers=fleet.admin)
    assert (r.status_code, _error(r)) == (404, "not_found")
    assert r.json()["error"]["details"] == {"max_fraction": 0.6}
    assert (
        'ferry_delta_builds_total{outcome="not_worth_it"} 1.0' in fleet.client.get("/metrics").text
    )


def test_rollout_start_precomputes_the_deltas_its_devices_will_ask_for(
    fleet: Fleet, pair: tuple[Path, Path]
) -> None:
    agents = fleet.devices(3)
    v1, v2 = _publish(fleet, pair[0]), _publish(fleet, pair[1])
    base = fleet.rollout(version=str(v1), waves=[100])
    commit(fleet, agents, v1, base["id"])
    fleet.tick()
    _wait_builds(fleet)
    assert _jobs(fleet).builder.cached(_sha(pair[0]), _sha(pair[1])) is None  # nothing ran v1

    rollout = fleet.rollout(version=str(v2), waves=[100])
    engine = fleet.app.state.ctx.engine
    pk = int(rollout["id"].removeprefix("r-"))
    assert [(p.path, p.from_sha256, p.to_sha256) for p in rollout_pairs(engine, pk)] == [
        (WEIGHTS, _sha(pair[0]), _sha(pair[1]))
    ]  # three devices on v1: one pair
    _wait_builds(fleet)
    r = fleet.client.get(DELTA.format(_sha(pair[0]), _sha(pair[1])), headers=fleet.admin)
    assert r.status_code == 200, r.text  # the very first request already gets the delta


def test_disabled_deltas_answer_404_and_start_nothing(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = harness_factory(deltas_enabled=False)
    old, new = random_pair(tmp_path / "random", size=1024)
    url = DELTA.format(h.upload(old.read_bytes()), h.upload(new.read_bytes()))
    r = h.client.get(url, headers=h.admin)
    assert (r.status_code, _error(r)) == (404, "not_found")
    assert getattr(h.app.state, "deltas", None) is None
    assert not (h.settings.data_dir / "deltas").exists()


def test_settings_come_from_the_environment_and_refuse_nonsense() -> None:
    settings = Settings.from_env(
        {
            "FERRY_DELTAS_ENABLED": "false",
            "FERRY_DELTA_MAX_FRACTION": "0.4",
            "FERRY_DELTA_BUILD_WORKERS": "2",
        }
    )
    assert (settings.deltas_enabled, settings.delta_max_fraction, settings.delta_build_workers) == (
        False,
        0.4,
        2,
    )
    assert settings.delta_dir == settings.data_dir / "deltas"
    for bad in ({"FERRY_DELTA_MAX_FRACTION": "0"}, {"FERRY_DELTA_BUILD_WORKERS": "0"}):
        with pytest.raises(ValueError):
            Settings.from_env(bad)
