"""Installing: one folder per version, pruning, free-space check, several slots, superseded downloads."""

from __future__ import annotations

from typing import Any

from tests.agent.conftest import Device
from tests.support.device_repository import DeviceRepository


def _bundle(
    repo: DeviceRepository, version: int, model: str = "vision/detector", size: int = 1000
) -> Any:
    return repo.add_bundle({"model.onnx": bytes([version]) * size}, version=version, model=model)


def test_old_versions_beyond_keep_versions_are_removed(
    make_device: Any, repo: DeviceRepository
) -> None:
    device = make_device("[install]\nkeep_versions = 2\n")
    for version in range(1, 5):
        repo.target({"main": _bundle(repo, version)})
        device.sync()
    slot = device.slot()
    kept = sorted(p.name for p in slot.versions.iterdir() if p.is_dir())
    assert kept == sorted([slot.current().name, slot.previous().name])
    assert (slot.current().manifest.version, slot.previous().manifest.version) == (4, 3)


def test_a_bundle_that_does_not_fit_is_refused_before_downloading(
    make_device: Any, repo: DeviceRepository
) -> None:
    device = make_device("[install]\nreserve_bytes = 1000000000000000\n")
    bundle = _bundle(repo, 1)
    repo.target({"main": bundle})
    device.sync()
    report = repo.reports_for("main")[-1]
    assert (report["state"], report["error_code"]) == ("failed", "disk_full")
    assert device.slot().current() is None
    assert not [p for _, p, _ in repo.requests if "/blobs/" in p]


def test_slots_are_independent(device: Device, repo: DeviceRepository) -> None:
    repo.target({"main": _bundle(repo, 1), "aux": _bundle(repo, 7, model="audio/kws")})
    device.sync()
    assert (device.current_version("main"), device.current_version("aux")) == (1, 7)
    assert repo.states("aux")[-1] == "committed" and repo.states("main")[-1] == "committed"


def test_another_model_in_a_slot_is_not_a_downgrade(device: Device, repo: DeviceRepository) -> None:
    repo.target({"main": _bundle(repo, 5)})
    device.sync()
    repo.target({"main": _bundle(repo, 1, model="vision/other")})
    device.sync()
    assert device.slot().current().manifest.full_name == "vision/other"


def test_report_carries_versions_sequence_bytes_and_timings(
    device: Device, repo: DeviceRepository
) -> None:
    repo.target({"main": _bundle(repo, 1)})
    device.sync()
    repo.target({"main": _bundle(repo, 2, size=5000)})
    device.sync()
    committed = repo.reports_for("main")[-1]
    assert (committed["from_version"], committed["to_version"]) == (1, 2)
    assert committed["sequence"] == repo.sequence and committed["rollout_id"] == "rollout-1"
    assert committed["bytes_downloaded"] == 5000
    assert {"download_ms", "verify_ms", "stage_ms", "switch_ms", "probe_ms", "total_ms"} <= set(
        committed["timings"]
    )
