"""firmware_examples/: the config loads through the real validator, the unit is hardened,
and the ONNX probe really loads a model and runs one inference (also as the agent's probe)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ferry.agent.config import load_config
from tests.agent.conftest import REPO_ROOT
from tests.support.device_repository import DeviceRepository

EXAMPLES = REPO_ROOT / "firmware_examples"
PROBE = EXAMPLES / "onnx_probe.py"


def tiny_onnx_model(bias: float = 1.0) -> bytes:
    """y = x @ W + b, with x of shape [1, 4]: the smallest model that really computes."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    weights = helper.make_tensor("W", TensorProto.FLOAT, [4, 2], [0.5] * 8)
    bias_t = helper.make_tensor("b", TensorProto.FLOAT, [2], [bias, bias])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[weights, bias_t],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_probe(model_dir: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("onnxruntime")
    env = {**os.environ, "FERRY_MODEL_DIR": str(model_dir), "FERRY_MODEL_VERSION": "3"}
    return subprocess.run(
        [sys.executable, str(PROBE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_example_config_passes_the_real_validator() -> None:
    config = load_config(EXAMPLES / "agent.toml")
    assert config.hardware == "jetson-orin" and config.tags == {"region": "eu", "channel": "canary"}
    assert config.probe.command[-1].endswith("onnx_probe.py") and config.install.keep_versions == 2
    assert str(config.state_dir) == "/var/lib/ferry-agent"


def test_systemd_unit_runs_the_agent_hardened() -> None:
    lines = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in
             (EXAMPLES / "ferry-agent.service").read_text().splitlines() if "=" in line and not line.startswith("#")}  # fmt: skip
    assert lines["ExecStart"].endswith("ferry-agent run") and lines["Restart"] == "always"
    for option, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                          "PrivateTmp": "yes", "StateDirectory": "ferry-agent", "UMask": "0077"}.items():  # fmt: skip
        assert lines[option] == value, option
    assert lines["User"] != "root"


def test_onnx_probe_runs_one_inference(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(tiny_onnx_model())
    result = run_probe(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ran one inference" in result.stdout and "y[1, 2]" in result.stdout


def test_onnx_probe_fails_on_a_corrupt_model(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"this is not a protobuf")
    assert run_probe(tmp_path).returncode != 0


def test_agent_commits_a_good_onnx_model_and_rolls_back_a_broken_one(
    make_device: Any, repo: DeviceRepository
) -> None:
    pytest.importorskip("onnxruntime")
    probe = f"[probe]\ncommand = {json.dumps([sys.executable, str(PROBE)])}\ntimeout_s = 60\n"
    device = make_device(probe)
    repo.target({"main": repo.add_bundle({"model.onnx": tiny_onnx_model()}, version=1)})
    device.sync()
    assert repo.states()[-1] == "committed" and device.current_version() == 1
    repo.target({"main": repo.add_bundle({"model.onnx": b"\x08\x07 truncated model"}, version=2)})
    device.sync()
    report = repo.reports_for("main")[-1]
    assert (report["state"], report["error_code"]) == ("rolled_back", "probe_failed")
    assert device.current_version() == 1
