"""Slow retrieval (issue 13): a server that trickles a blob must not hold the agent for ever.

The guard (``RateGuard``) is checked with a frozen clock; the whole story runs
against the repository simulator, a real HTTP server in a thread, sending one
byte at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ferry.agent.config import DownloadConfig, parse_config
from ferry.agent.download import RateGuard
from ferry.agent.errors import ConfigError, DownloadTimeoutError
from tests.agent.conftest import Device
from tests.support.device_repository import TRICKLE, DeviceRepository

V1 = {"model.onnx": b"\x01" * 600}
V2 = {"model.onnx": bytes(range(256)) + b"\x02" * 344}  # 600 bytes: ~12 s at 50 bytes/s
FAST_TIMEOUT = "[download]\nmin_rate_bytes_s = 1000\nrate_window_s = 1\ndeadline_grace_s = 1\n"


class FrozenClock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_trickle_below_the_minimum_rate_is_cut_at_the_end_of_a_window() -> None:
    clock = FrozenClock()
    guard = RateGuard(10**9, DownloadConfig(1024, 60.0, 3600.0), "blob", clock)
    for _ in range(59):  # one byte a second: every read is "on time" for a per-read timeout
        clock.now += 1
        guard.update(1)
    clock.now += 1
    with pytest.raises(DownloadTimeoutError, match="below 1024 bytes/s"):
        guard.update(1)


def test_a_transfer_at_the_minimum_rate_is_never_cut() -> None:
    clock = FrozenClock()
    guard = RateGuard(1024 * 600, DownloadConfig(1024, 60.0, 60.0), "blob", clock)
    for _ in range(600):
        clock.now += 1
        guard.update(1024)


def test_overall_deadline_follows_the_signed_size() -> None:
    clock = FrozenClock()
    pace = DownloadConfig(min_rate_bytes_s=100, rate_window_s=1000.0, deadline_grace_s=10.0)
    guard = RateGuard(1000, pace, "blob", clock)  # deadline: 10 s + 1000 bytes / 100 bytes/s
    clock.now += 20
    guard.update(500)
    clock.now += 0.5
    with pytest.raises(DownloadTimeoutError, match="deadline"):
        guard.update(500)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("min_rate_bytes_s = 0", "download.min_rate_bytes_s"),
        ("min_rate_bytes_s = 1.5", "download.min_rate_bytes_s"),
        ("rate_window_s = 0.5", "download.rate_window_s"),
        ("deadline_grace_s = -1", "download.deadline_grace_s"),
        ("deadline_s = 10", "download.deadline_s"),
    ],
)
def test_bad_download_limits_are_refused_naming_the_key(table: str, message: str) -> None:
    data = {"state_dir": "s", "hardware": "x86_64", "download": {}}
    key, value = (part.strip() for part in table.split("="))
    data["download"] = {key: float(value) if "." in value else int(value)}
    with pytest.raises(ConfigError, match=message):
        parse_config(data, base=Path("/tmp"))


def test_download_limits_have_sane_defaults() -> None:
    config = parse_config({"state_dir": "s", "hardware": "x86_64"}, base=Path("/"))
    assert config.download == DownloadConfig(1024, 60.0, 60.0)


def test_server_trickling_a_blob_times_out_keeps_the_model_and_resumes_later(
    make_device: Any, repo: DeviceRepository
) -> None:
    device: Device = make_device(FAST_TIMEOUT)
    repo.target({"main": repo.add_bundle(V1, version=1)})
    device.sync()
    v2 = repo.add_bundle(V2, version=2)
    sha = v2.manifest.files[0].sha256
    repo.blob_mode[sha] = TRICKLE
    repo.trickle_delay_s = 0.02
    repo.target({"main": v2})

    with pytest.raises(DownloadTimeoutError):
        device.agent.sync()
    device.agent.sender.flush()
    assert device.current_version() == 1, "the running model is kept"
    stalls = [r for r in repo.reports_for("main") if r["error_code"] == "download_timeout"]
    assert [r["state"] for r in stalls] == ["downloading"]
    part = device.slot().staging(v2.digest) / "model.onnx.part"
    kept = part.stat().st_size
    assert 0 < kept < len(V2["model.onnx"]), "the partial file is kept for the resume"

    repo.blob_mode[sha] = "honest"  # the link recovers: the next cycle resumes
    device.sync()
    assert device.current_version() == 2
    ranges = [rng for _, path, rng in repo.requests if path.endswith(f"/blobs/{sha}")]
    assert ranges == [None, f"bytes={kept}-"]
    committed = [r for r in repo.reports_for("main") if r["state"] == "committed"]
    assert committed and committed[0]["error_code"] is None
