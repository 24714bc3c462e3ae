"""Health probes: a passing probe commits, a failing or hanging one rolls back and says why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import Device
from tests.support.device_repository import Bundle, DeviceRepository

V1 = {"model.onnx": b"one" * 1000}
V2 = {"model.onnx": b"two" * 1000}


def _install_v1_then_v2(device: Device, repo: DeviceRepository) -> tuple[Bundle, Bundle]:
    v1 = repo.add_bundle(V1, version=1)
    repo.target({"main": v1})
    device.sync()
    assert device.current_version() == 1
    v2 = repo.add_bundle(V2, version=2)
    repo.target({"main": v2})
    device.sync()
    return v1, v2


def _probe(script: str, timeout: float = 10) -> str:
    """A ``[probe]`` table running ``script`` with sh (JSON strings are valid TOML strings)."""
    return f"[probe]\ncommand = {json.dumps(['sh', '-c', script])}\ntimeout_s = {timeout}\n"


def test_passing_probe_sees_the_new_version_and_commits(
    make_device: Any, repo: DeviceRepository
) -> None:
    device = make_device(
        _probe('test -f "$FERRY_MODEL_DIR/model.onnx" && test -n "$FERRY_MODEL_NAME"')
    )
    _install_v1_then_v2(device, repo)
    assert repo.states()[-1] == "committed" and device.current_version() == 2
    assert "probe_ms" in repo.reports_for("main")[-1]["timings"]


def test_failing_probe_rolls_back_with_its_output(make_device: Any, repo: DeviceRepository) -> None:
    device = make_device(
        _probe(
            'test "$FERRY_MODEL_VERSION" = 1 || { echo model v$FERRY_MODEL_VERSION is broken; exit 3; }'
        )
    )
    _install_v1_then_v2(device, repo)
    report = repo.reports_for("main")[-1]
    assert (report["state"], report["error_code"]) == ("rolled_back", "probe_failed")
    assert "model v2 is broken" in report["detail"] and "exited 3" in report["detail"]
    assert device.current_version() == 1
    assert [p.name for p in device.slot().versions.iterdir() if p.is_dir()] == [
        device.slot().current().name
    ]


def test_hanging_probe_is_killed_at_its_timeout_and_rolls_back(
    make_device: Any, repo: DeviceRepository
) -> None:
    device = make_device(_probe('test "$FERRY_MODEL_VERSION" = 1 || sleep 60', timeout=0.5))
    _install_v1_then_v2(device, repo)
    report = repo.reports_for("main")[-1]
    assert (report["state"], report["error_code"]) == ("rolled_back", "probe_timeout")
    assert device.current_version() == 1


def test_probe_output_is_truncated(make_device: Any, repo: DeviceRepository) -> None:
    device = make_device(
        _probe('test "$FERRY_MODEL_VERSION" = 1 || { yes spam | head -c 100000; exit 1; }')
        + "output_limit = 200\n"
    )
    _install_v1_then_v2(device, repo)
    assert len(repo.reports_for("main")[-1]["detail"]) < 400


def test_failing_probe_on_first_install_leaves_no_current_model(
    make_device: Any, repo: DeviceRepository
) -> None:
    device = make_device(_probe("exit 1"))
    repo.target({"main": repo.add_bundle(V1, version=1)})
    device.sync()
    assert repo.states()[-1] == "rolled_back" and device.slot().current() is None


@pytest.fixture
def probe_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "site_probe.py").write_text(
        "from pathlib import Path\n"
        "def check(model_dir):\n"
        "    return Path(model_dir, 'model.onnx').read_bytes().startswith(b'one')\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{Path(__file__).resolve().parents[2]}")
    return "site_probe:check"


def test_entry_point_probe_returning_false_rolls_back(
    make_device: Any, repo: DeviceRepository, probe_module: str
) -> None:
    device = make_device(f'[probe]\nentry_point = "{probe_module}"\ntimeout_s = 20\n')
    _install_v1_then_v2(device, repo)
    report = repo.reports_for("main")[-1]
    assert (report["state"], report["error_code"]) == ("rolled_back", "probe_failed")
    assert "returned False" in report["detail"] and device.current_version() == 1
