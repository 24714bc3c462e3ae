"""Delta downloads: used when the server has one, verified against the manifest, and any
failure falls back to the full download."""

from __future__ import annotations

import hashlib

import bsdiff4
import pytest

from tests.agent.conftest import Device
from tests.support.device_repository import DeviceRepository

OLD = bytes(range(256)) * 400
NEW = OLD[:50_000] + b"fine-tuned" + OLD[50_010:]


@pytest.fixture
def running_old(device: Device, repo: DeviceRepository) -> None:
    repo.target({"main": repo.add_bundle({"model.bin": OLD}, version=1)})
    device.sync()
    assert device.current_version() == 1


def blob_requests(repo: DeviceRepository, data: bytes) -> int:
    sha = hashlib.sha256(data).hexdigest()
    return sum(1 for _, path, _ in repo.requests if path.endswith(f"/blobs/{sha}"))


def test_delta_is_applied_instead_of_the_full_download(
    device: Device, repo: DeviceRepository, running_old: None
) -> None:
    repo.add_delta(OLD, NEW, bsdiff4.diff(OLD, NEW))
    repo.target({"main": repo.add_bundle({"model.bin": NEW}, version=2)})
    device.sync()
    assert repo.states()[-1] == "committed" and device.current_version() == 2
    assert blob_requests(repo, NEW) == 0
    assert (device.slot().current().path / "model.bin").read_bytes() == NEW
    assert repo.reports_for("main")[-1]["bytes_downloaded"] < len(NEW) // 10


@pytest.mark.parametrize(
    "delta", [b"BSDIFF40 garbage" * 10, bsdiff4.diff(OLD, OLD[::-1]), b"x" * (len(NEW) + 1)]
)
def test_bad_delta_falls_back_to_the_full_download(
    device: Device, repo: DeviceRepository, running_old: None, delta: bytes
) -> None:
    repo.add_delta(OLD, NEW, delta)
    repo.target({"main": repo.add_bundle({"model.bin": NEW}, version=2)})
    device.sync()
    assert repo.states()[-1] == "committed" and device.current_version() == 2
    assert blob_requests(repo, NEW) == 1
    assert (device.slot().current().path / "model.bin").read_bytes() == NEW


def test_no_delta_on_the_server_means_a_full_download(
    device: Device, repo: DeviceRepository, running_old: None
) -> None:
    repo.target({"main": repo.add_bundle({"model.bin": NEW}, version=2)})
    device.sync()
    assert device.current_version() == 2 and blob_requests(repo, NEW) == 1


def test_deltas_can_be_switched_off(make_device: object, repo: DeviceRepository) -> None:
    device = make_device("[install]\nuse_deltas = false\n")  # type: ignore[operator]
    repo.target({"main": repo.add_bundle({"model.bin": OLD}, version=1)})
    device.sync()
    repo.add_delta(OLD, NEW, bsdiff4.diff(OLD, NEW))
    repo.target({"main": repo.add_bundle({"model.bin": NEW}, version=2)})
    device.sync()
    assert device.current_version() == 2 and not any("/deltas/" in p for _, p, _ in repo.requests)


def _decoder_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record every call of the delta decoder (nothing else is faked: the agent runs for real)."""
    import ferry.protocol.delta as delta_package

    calls: list[object] = []
    real = delta_package.apply_delta_file

    def spy(*args: object, **kwargs: object) -> None:
        calls.append(args)
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(delta_package, "apply_delta_file", spy)
    return calls


def test_a_delta_the_signed_descriptor_does_not_vouch_for_never_reaches_the_decoder(
    device: Device, repo: DeviceRepository, running_old: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13: the server (or a proxy) serves other bytes than the ones it signed."""
    calls = _decoder_calls(monkeypatch)
    honest = bsdiff4.diff(OLD, NEW)
    repo.add_delta(OLD, NEW, b"BSDIFF40" + b"\xff" * 64, described=honest)
    repo.target({"main": repo.add_bundle({"model.bin": NEW}, version=2)})
    device.sync()
    assert calls == [], "the decoder ran on unauthenticated bytes"
    assert repo.states()[-1] == "committed" and blob_requests(repo, NEW) == 1


def test_a_delta_longer_than_its_signed_size_is_cut_off_and_not_decoded(
    device: Device, repo: DeviceRepository, running_old: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _decoder_calls(monkeypatch)
    honest = bsdiff4.diff(OLD, NEW)
    repo.add_delta(OLD, NEW, honest + b"\x00" * 4096, described=honest)
    repo.target({"main": repo.add_bundle({"model.bin": NEW}, version=2)})
    device.sync()
    assert calls == [] and blob_requests(repo, NEW) == 1
    assert device.current_version() == 2


def test_a_descriptor_signed_by_an_untrusted_key_means_the_full_download(
    device: Device, repo: DeviceRepository, running_old: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ferry.protocol.keys import SigningKey

    calls = _decoder_calls(monkeypatch)
    repo.add_delta(OLD, NEW, bsdiff4.diff(OLD, NEW))
    real_bundles = repo.authority.bundles
    repo.target({"main": repo.add_bundle({"model.bin": NEW}, version=2)})
    repo.authority.bundles = SigningKey.generate()  # descriptors now signed by a stranger
    try:
        device.sync()
    finally:
        repo.authority.bundles = real_bundles
    assert calls == [] and blob_requests(repo, NEW) == 1 and device.current_version() == 2
