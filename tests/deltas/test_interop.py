"""Whole-file BSDIFF40 deltas are standard: Debian's C bspatch and the device script apply them."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ferry.server.deltas import build_bsdiff40

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "firmware_examples" / "bspatch-apply.sh"
BSPATCH = shutil.which("bspatch")
needs_bspatch = pytest.mark.skipif(
    BSPATCH is None, reason="bspatch not found: apt-get install -y bsdiff (Debian package 'bsdiff')"
)
Pair = Callable[..., tuple[Path, Path]]


@needs_bspatch
def test_c_bspatch_applies_ferry_bsdiff40(model_pair: Pair, tmp_path: Path) -> None:
    old, new = model_pair()
    patch = build_bsdiff40(old, new, tmp_path / "patch.bsdiff")
    assert patch.path.read_bytes()[:8] == b"BSDIFF40"
    subprocess.run([str(BSPATCH), str(old), str(tmp_path / "out"), str(patch.path)], check=True)
    assert (tmp_path / "out").read_bytes() == new.read_bytes()


def _run_script(
    old: Path, patch: Path, out: Path, sha256: str, size: int
) -> subprocess.CompletedProcess[str]:
    args = ["sh", str(SCRIPT), str(old), str(patch), str(out), sha256, str(size)]
    return subprocess.run(args, capture_output=True, text=True, check=False)


@needs_bspatch
def test_device_script_applies_and_verifies(model_pair: Pair, tmp_path: Path) -> None:
    old, new = model_pair()
    patch = build_bsdiff40(old, new, tmp_path / "patch.bsdiff")
    data = new.read_bytes()
    done = _run_script(
        old, patch.path, tmp_path / "model", hashlib.sha256(data).hexdigest(), len(data)
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model").read_bytes() == data


@needs_bspatch
def test_device_script_refuses_a_result_that_does_not_match_the_manifest(
    model_pair: Pair, tmp_path: Path
) -> None:
    old, new = model_pair()
    patch = build_bsdiff40(old, new, tmp_path / "patch.bsdiff")
    data = new.read_bytes()
    wrong_sha = _run_script(old, patch.path, tmp_path / "model", "0" * 64, len(data))
    assert wrong_sha.returncode == 4
    assert "sha256" in wrong_sha.stderr
    wrong_size = _run_script(
        old, patch.path, tmp_path / "model", hashlib.sha256(data).hexdigest(), len(data) + 1
    )
    assert wrong_size.returncode == 4
    assert not (tmp_path / "model").exists()
    assert list(tmp_path.glob("model.part*")) == []


@needs_bspatch
def test_device_script_refuses_a_corrupt_patch(model_pair: Pair, tmp_path: Path) -> None:
    old, _ = model_pair()
    (tmp_path / "bad").write_bytes(b"BSDIFF40" + b"\xff" * 40)
    done = _run_script(old, tmp_path / "bad", tmp_path / "model", "0" * 64, 1)
    assert done.returncode == 3
    assert not (tmp_path / "model").exists()
