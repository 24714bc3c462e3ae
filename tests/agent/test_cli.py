"""``ferry-agent`` as a device runs it: enroll, status, rollback, bad config, clean logs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from ferry.protocol.keys import SigningKey
from tests.agent.conftest import REPO_ROOT, Device
from tests.support.device_repository import DeviceRepository


def cli(device: Device, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry.agent.cli", "--config", str(device.config_path), *args],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_enroll_stores_a_0600_credential_and_pins_the_root(
    make_device: Any, repo: DeviceRepository
) -> None:
    device = make_device(enrolled=False)
    root = repo.authority.root.public.keyid
    result = cli(
        device,
        "enroll",
        "--server",
        repo.url,
        "--token",
        repo.enrollment_token,
        "--root-keyid",
        root,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"device_id": repo.device_id, "groups": ["canary"]}
    state = device.config.state_dir
    assert (state / "credential").read_text() == repo.credential
    assert mode(state / "credential") == 0o600 and mode(state / "device.json") == 0o600
    trust = json.loads((state / "trust.json").read_text())
    assert root in trust["keyring"]["signed"]["roles"]["root"]["keyids"]
    sent = repo.enrollments[-1]
    assert (sent["hardware"], sent["tags"], sent["device_id"]) == (
        "x86_64",
        {"region": "eu"},
        repo.device_id,
    )
    assert sent["agent_version"]


def test_enroll_refuses_a_wrong_token_and_an_unexpected_root(
    make_device: Any, repo: DeviceRepository
) -> None:
    device = make_device(enrolled=False)
    wrong_token = cli(device, "enroll", "--server", repo.url, "--token", "nope")
    assert (
        wrong_token.returncode == 1
        and json.loads(wrong_token.stderr)["error"] == "enrollment_failed"
    )
    stranger = SigningKey.generate().public.keyid
    wrong_root = cli(
        device,
        "enroll",
        "--server",
        repo.url,
        "--token",
        repo.enrollment_token,
        "--root-keyid",
        stranger,
    )
    assert (
        wrong_root.returncode == 1 and "untrusted_key" in json.loads(wrong_root.stderr)["message"]
    )
    assert not (device.config.state_dir / "credential").exists()


def test_bad_config_exits_2_naming_the_key(make_device: Any) -> None:
    device = make_device(enrolled=False)
    device.config_path.write_text(device.config_path.read_text() + "[install]\nkeep_versoins = 3\n")
    result = cli(device, "status")
    assert result.returncode == 2
    assert json.loads(result.stderr) == {
        "error": "config_invalid",
        "message": "unknown config key 'install.keep_versoins'",
    }


def test_run_before_enrolment_says_so(make_device: Any) -> None:
    result = cli(make_device(enrolled=False), "run")
    assert result.returncode == 1 and json.loads(result.stderr)["error"] == "not_enrolled"


def test_status_shows_installed_previous_and_pending(
    device: Device, repo: DeviceRepository
) -> None:
    for version in (1, 2):
        repo.target(
            {"main": repo.add_bundle({"model.onnx": bytes([version]) * 100}, version=version)}
        )
        device.agent.sync()  # reports stay queued: not flushed
    result = cli(device, "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    main = status["slots"]["main"]
    assert (main["current"]["version"], main["previous"]["version"], main["state"]) == (
        2,
        1,
        "idle",
    )
    assert status["pending_reports"] == 12 and status["desired_state_sequence"] == repo.sequence
    human = cli(device, "status")
    assert "slot main: running vision/detector v2, previous v1, state idle" in human.stdout


def test_manual_rollback_switches_back_and_reports(device: Device, repo: DeviceRepository) -> None:
    assert cli(device, "rollback").returncode == 1  # nothing installed yet
    for version in (1, 2):
        repo.target(
            {"main": repo.add_bundle({"model.onnx": bytes([version]) * 100}, version=version)}
        )
        device.sync()
    result = cli(device, "rollback", "--slot", "main")
    assert result.returncode == 0, result.stderr
    assert device.current_version() == 1
    report = repo.reports_for("main")[-1]
    assert (report["state"], report["from_version"], report["to_version"]) == ("rolled_back", 2, 1)
    device.sync()
    assert device.current_version() == 1, "the daemon must not undo a manual rollback"


def test_logs_are_json_lines_without_the_credential(device: Device, repo: DeviceRepository) -> None:
    repo.target({"main": repo.add_bundle({"model.onnx": b"x" * 100}, version=1)})
    device.start()
    repo.wait_for(
        lambda: device.current_version() == 1 and repo.states()[-1:] == ["committed"],
        what="install",
    )
    device.stop()
    lines = [json.loads(line) for line in device.log().splitlines() if line.strip()]
    assert {"ts", "level", "logger", "event"} <= set(lines[0])
    assert any(line["event"] == "transition" and line["state"] == "committed" for line in lines)
    assert repo.credential not in device.log()


def test_reenroll_presents_the_current_credential_only_to_its_own_server(
    make_device: Any, repo: DeviceRepository
) -> None:
    """The server refuses to re-enrol an existing id for a bare token holder (takeover);
    the real device proves itself with the credential it holds, and only to its server."""
    device = make_device(enrolled=False)
    first = cli(device, "enroll", "--server", repo.url, "--token", repo.enrollment_token)
    assert first.returncode == 0, first.stderr
    assert "credential" not in repo.enrollments[-1]
    again = cli(device, "enroll", "--server", repo.url, "--token", repo.enrollment_token)
    assert again.returncode == 0, again.stderr
    sent = repo.enrollments[-1]
    assert (sent["device_id"], sent["credential"]) == (repo.device_id, repo.credential)
    other_url = repo.url.replace("127.0.0.1", "localhost")
    cli(device, "enroll", "--server", other_url, "--token", repo.enrollment_token)
    assert "credential" not in repo.enrollments[-1]
