"""Crash tests: SIGKILL a real ``ferry-agent run`` at every state, restart it, check the model.

``FERRY_AGENT_TEST_HALT_AT=<state>`` makes the agent kill itself with SIGKILL right
after persisting that state (a power cut at the worst moment). After every kill
and after the restart, the slot must run the old or the new version, complete and
matching its signed manifest, never a mix.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from typing import Any

import pytest

from ferry.agent.crashpoints import HALT_ENV
from ferry.protocol.verify import verify_file
from tests.agent.conftest import Device
from tests.support.device_repository import (
    CORRUPT,
    RANGE_REFUSED,
    SLOW,
    STALE_RANGE,
    Bundle,
    DeviceRepository,
)

V1 = {"model.onnx": b"\x01" * 200_000, "config.json": b'{"v": 1}'}
V2 = {"model.onnx": b"\x02" * 200_000, "config.json": b'{"v": 2}'}
FAILING_PROBE = (
    '[probe]\ncommand = ["sh", "-c", "test \\"$FERRY_MODEL_VERSION\\" = 1"]\ntimeout_s = 10\n'
)
PASSING_PROBE = (
    '[probe]\ncommand = ["sh", "-c", "test -f \\"$FERRY_MODEL_DIR/model.onnx\\""]\ntimeout_s = 10\n'
)


@dataclass(frozen=True)
class Crash:
    """Kill at ``state`` in a scenario that ends in ``outcome`` with ``final_version`` running."""

    state: str
    outcome: str
    final_version: int
    config: str = PASSING_PROBE
    corrupt: bool = False


CRASHES = [
    Crash("downloading", "committed", 2),
    Crash("verifying", "committed", 2),
    Crash("staged", "committed", 2),
    Crash("switching", "committed", 2),
    Crash("probing", "committed", 2),
    Crash("committed", "committed", 2),
    Crash("rolled_back", "rolled_back", 1, config=FAILING_PROBE),
    Crash("failed", "failed", 1, corrupt=True),
]


def assert_consistent(device: Device, versions: tuple[int, ...]) -> int:
    """The slot runs one of ``versions``, every file complete and matching its manifest."""
    current = device.slot().current()
    assert current is not None, "the slot lost its model"
    assert current.manifest.version in versions
    for entry in current.manifest.files:
        verify_file(current.path / entry.path, entry.size, entry.sha256)
    return current.manifest.version


def slot_record(device: Device) -> dict[str, Any]:
    path = device.config.state_dir / "slots" / "main.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wait_until_idle(device: Device, repo: DeviceRepository, outcome: str) -> None:
    def settled() -> bool:
        record = slot_record(device)
        return record.get("state") == "idle" and (record.get("last") or {}).get("state") == outcome

    repo.wait_for(settled, what=f"the slot to settle in {outcome}")


def _install_v1(device: Device, repo: DeviceRepository) -> None:
    repo.target({"main": repo.add_bundle(V1, version=1)})
    device.sync()
    assert device.current_version() == 1


@pytest.mark.parametrize("crash", CRASHES, ids=[c.state for c in CRASHES])
def test_kill_at_every_state_then_restart(
    crash: Crash, make_device: Any, repo: DeviceRepository
) -> None:
    device = make_device(crash.config)
    _install_v1(device, repo)
    v2 = repo.add_bundle(V2, version=2)
    if crash.corrupt:
        repo.blob_mode[next(e.sha256 for e in v2.manifest.files if e.path == "model.onnx")] = (
            CORRUPT
        )
    repo.target({"main": v2})

    device.start(env={HALT_ENV: crash.state})
    assert device.wait_exit() == -signal.SIGKILL, device.log()
    assert slot_record(device)["state"] == crash.state
    assert_consistent(device, (1, 2))

    device.start()
    wait_until_idle(device, repo, crash.outcome)
    device.stop()
    assert assert_consistent(device, (crash.final_version,)) == crash.final_version
    assert not any(device.slot().staging_root.iterdir()), "staging must be cleaned up"


def test_kill_mid_download_resumes_with_range(make_device: Any, repo: DeviceRepository) -> None:
    device = make_device()
    _install_v1(device, repo)
    big = {"model.onnx": bytes(range(256)) * 16_384}  # 4 MiB, served slowly
    v2 = repo.add_bundle(big, version=2)
    sha = v2.manifest.files[0].sha256
    repo.blob_mode[sha] = SLOW
    repo.target({"main": v2})
    part = device.slot().staging(v2.digest) / "model.onnx.part"

    device.start()
    repo.wait_for(
        lambda: part.exists() and part.stat().st_size > 256 << 10, what="a partial download"
    )
    device.kill()
    assert_consistent(device, (1,))

    repo.blob_mode[sha] = "honest"
    device.start()
    wait_until_idle(device, repo, "committed")
    device.stop()
    assert assert_consistent(device, (2,)) == 2
    ranges = [rng for _, path, rng in repo.requests if path.endswith(sha) and rng]
    assert ranges and int(ranges[-1].removeprefix("bytes=").rstrip("-")) > 0


def test_sigterm_mid_download_stops_between_chunks_and_resumes(
    make_device: Any, repo: DeviceRepository
) -> None:
    device = make_device()
    _install_v1(device, repo)
    v2 = repo.add_bundle({"model.onnx": bytes(range(256)) * 16_384}, version=2)
    sha = v2.manifest.files[0].sha256
    repo.blob_mode[sha] = SLOW
    repo.target({"main": v2})
    part = device.slot().staging(v2.digest) / "model.onnx.part"

    device.start()
    repo.wait_for(
        lambda: part.exists() and part.stat().st_size > 256 << 10, what="a partial download"
    )
    device.stop()
    assert device.process is not None and device.process.returncode == 0, device.log()
    assert slot_record(device)["state"] == "downloading" and part.exists()
    assert_consistent(device, (1,))

    repo.blob_mode[sha] = "honest"
    device.start()
    wait_until_idle(device, repo, "committed")
    device.stop()
    assert assert_consistent(device, (2,)) == 2


def test_reboot_loop_in_probing_rolls_back(make_device: Any, repo: DeviceRepository) -> None:
    device = make_device(PASSING_PROBE + "[install]\nmax_resumes = 2\n")
    _install_v1(device, repo)
    repo.target({"main": repo.add_bundle(V2, version=2)})
    for _ in range(3):  # the first run and two recoveries all die in the probe
        device.start(env={HALT_ENV: "probing"})
        assert device.wait_exit() == -signal.SIGKILL, device.log()
        assert_consistent(device, (1, 2))
    device.start()
    wait_until_idle(device, repo, "rolled_back")
    device.stop()
    assert assert_consistent(device, (1,)) == 1
    assert slot_record(device)["last"]["error_code"] == "reboot_loop"


# --- a kill between the last byte and the rename (issue 14) -----------------------------


def _blob_gets(repo: DeviceRepository, sha256: str) -> list[str | None]:
    """The Range header of every GET of a blob (None: the whole blob was asked for)."""
    return [rng for method, path, rng in repo.requests if method == "GET" and path.endswith(sha256)]


def _v2_with_part(
    device: Device, repo: DeviceRepository, content: bytes
) -> tuple[Bundle, str, Any]:
    """v1 runs; v2 is targeted and its model.onnx.part already holds ``content``."""
    _install_v1(device, repo)
    v2 = repo.add_bundle(V2, version=2)
    sha = next(e.sha256 for e in v2.manifest.files if e.path == "model.onnx")
    part = device.slot().staging(v2.digest) / "model.onnx.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(content)
    repo.target({"main": v2})
    return v2, sha, part


def test_kill_after_last_byte_before_rename_is_promoted_on_restart(
    make_device: Any, repo: DeviceRepository
) -> None:
    device = make_device(PASSING_PROBE)
    _install_v1(device, repo)
    v2 = repo.add_bundle(V2, version=2)
    repo.target({"main": v2})

    device.start(env={HALT_ENV: "download.complete"})
    assert device.wait_exit() == -signal.SIGKILL, device.log()
    (part,) = device.slot().staging_root.rglob("*.part")
    entry = next(e for e in v2.manifest.files if part.name == f"{e.path}.part")
    assert part.stat().st_size == entry.size, "the kill left a complete .part"
    asked_before = len(_blob_gets(repo, entry.sha256))

    device.start()
    wait_until_idle(device, repo, "committed")
    device.stop()
    assert assert_consistent(device, (2,)) == 2
    assert len(_blob_gets(repo, entry.sha256)) == asked_before, "promoted, not fetched again"


def test_complete_part_file_is_hashed_and_promoted_without_asking_the_server(
    device: Device, repo: DeviceRepository
) -> None:
    _, sha, _ = _v2_with_part(device, repo, V2["model.onnx"])
    device.sync()
    assert assert_consistent(device, (2,)) == 2
    assert _blob_gets(repo, sha) == [], "a complete, matching .part needs no request"


def test_complete_part_file_with_wrong_bytes_is_downloaded_again_from_zero(
    device: Device, repo: DeviceRepository
) -> None:
    _, sha, _ = _v2_with_part(device, repo, b"\x07" * len(V2["model.onnx"]))
    device.sync()
    assert assert_consistent(device, (2,)) == 2
    assert _blob_gets(repo, sha) == [None], "a bad complete .part is discarded, not resumed"


def test_416_on_resume_restarts_from_zero_once(device: Device, repo: DeviceRepository) -> None:
    _, sha, _ = _v2_with_part(device, repo, V2["model.onnx"][:1000])
    repo.blob_mode[sha] = STALE_RANGE
    device.sync()
    assert assert_consistent(device, (2,)) == 2
    assert _blob_gets(repo, sha) == ["bytes=1000-", None]


def test_416_without_range_fails_with_a_clear_code_instead_of_retrying(
    device: Device, repo: DeviceRepository
) -> None:
    _, sha, _ = _v2_with_part(device, repo, V2["model.onnx"][:1000])
    repo.blob_mode[sha] = RANGE_REFUSED
    device.sync()  # fatal: no transient error escapes, nothing is retried
    assert assert_consistent(device, (1,)) == 1
    assert _blob_gets(repo, sha) == ["bytes=1000-", None]
    assert slot_record(device)["last"]["error_code"] == "range_not_satisfiable"
    failed = [r for r in repo.reports_for("main") if r["state"] == "failed"]
    assert [r["error_code"] for r in failed] == ["range_not_satisfiable"]


# --- leftovers of a kill (issue 14) -----------------------------------------------------


def _terminal_ids(repo: DeviceRepository, to_version: int) -> list[str]:
    return [
        r["report_id"]
        for r in repo.reports_for("main")
        if r["state"] in ("committed", "rolled_back", "failed") and r["to_version"] == to_version
    ]


@pytest.mark.parametrize("state", ["committed.persisted", "committed"])
def test_kill_around_the_terminal_report_sends_exactly_one(
    state: str, make_device: Any, repo: DeviceRepository
) -> None:
    device = make_device(PASSING_PROBE)
    _install_v1(device, repo)
    repo.target({"main": repo.add_bundle(V2, version=2)})
    device.start(env={HALT_ENV: state})
    assert device.wait_exit() == -signal.SIGKILL, device.log()
    device.start()
    wait_until_idle(device, repo, "committed")
    repo.wait_for(lambda: len(_terminal_ids(repo, 2)) >= 1, what="the terminal report")
    device.stop()
    assert len(_terminal_ids(repo, 2)) == 1, repo.states()


def test_half_removed_version_is_not_kept_as_the_newest(
    make_device: Any, repo: DeviceRepository
) -> None:
    device = make_device("[install]\nkeep_versions = 3\n")
    bundles = {
        n: repo.add_bundle({"model.onnx": bytes([n]) * 1000}, version=n) for n in (1, 2, 3, 4)
    }
    for n in (1, 2, 3):
        repo.target({"main": bundles[n]})
        device.sync()
    slot = device.slot()
    orphan = slot.versions / "v0-0123456789abcdef"  # a prune killed mid-rmtree: no manifest
    orphan.mkdir()
    (orphan / "model.onnx").write_bytes(b"\0" * 10)

    repo.target({"main": bundles[4]})
    device.sync()
    kept = sorted(p.name for p in slot.versions.iterdir() if p.is_dir())
    assert orphan.name not in kept
    versions = sorted(v.manifest.version for v in map(slot.installed, kept) if v is not None)
    assert versions == [2, 3, 4], kept


def test_half_removed_version_is_swept_at_restart(device: Device, repo: DeviceRepository) -> None:
    _install_v1(device, repo)
    orphan = device.slot().versions / "v0-0123456789abcdef"
    orphan.mkdir()
    (device.slot().root / ".current.tmp").symlink_to("versions/v0-0123456789abcdef")
    device.agent.recover()
    assert not orphan.exists() and not (device.slot().root / ".current.tmp").is_symlink()
    assert assert_consistent(device, (1,)) == 1


def test_after_a_probe_failure_rollback_previous_is_still_n_minus_1(
    make_device: Any, repo: DeviceRepository
) -> None:
    device = make_device(
        '[probe]\ncommand = ["sh", "-c", "test \\"$FERRY_MODEL_VERSION\\" != 3"]\n'
    )
    for n in (1, 2, 3):
        repo.target({"main": repo.add_bundle({"model.onnx": bytes([n]) * 100}, version=n)})
        device.sync()
    assert slot_record(device)["last"]["state"] == "rolled_back"
    slot = device.slot()
    assert (slot.current().manifest.version, slot.previous().manifest.version) == (2, 1)
    device.agent.rollback("main")  # by hand, to N-1: refused before (previous was current)
    assert device.current_version() == 1


def test_kill_between_previous_and_current_links_rolls_forward(
    make_device: Any, repo: DeviceRepository
) -> None:
    device = make_device(PASSING_PROBE)
    _install_v1(device, repo)
    repo.target({"main": repo.add_bundle(V2, version=2)})
    device.start(env={HALT_ENV: "switch.previous"})
    assert device.wait_exit() == -signal.SIGKILL, device.log()
    assert_consistent(device, (1,))
    device.start()
    wait_until_idle(device, repo, "committed")
    device.stop()
    assert assert_consistent(device, (2,)) == 2
    assert device.slot().previous().manifest.version == 1
