"""`ferry delta create|apply|inspect`: local deltas without a server, for people and scripts."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from ferry.cli.main import app
from tests.deltas.formats import fine_tuned, weights, write_gguf

ENV = {"COLUMNS": "80", "NO_COLOR": "1"}


def ferry(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["delta", *(str(a) for a in args)], env=ENV)


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(old, new) GGUF files, named relative to the test's directory (short output lines)."""
    monkeypatch.chdir(tmp_path)
    tensors = weights()
    return (write_gguf(Path("old.gguf"), tensors),
            write_gguf(Path("new.gguf"), fine_tuned(tensors, 2)))  # fmt: skip


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fits(text: str) -> None:
    assert text.strip()
    assert max(len(line) for line in text.splitlines()) <= 80, text


def test_create_apply_round_trip_in_80_columns(pair: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = pair
    created = ferry("create", old, new, "-o", Path("p.delta"))
    assert created.exit_code == 0, created.output
    _fits(created.output)
    assert "% of the new file" in created.output and "(gguf)" in created.output
    applied = ferry("apply", old, Path("p.delta"), "-o", Path("out"),
                    "--expect-sha256", _sha(new))  # fmt: skip
    assert applied.exit_code == 0, applied.output
    _fits(applied.output)
    assert (Path("out")).read_bytes() == new.read_bytes()


def test_create_and_apply_json(pair: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = pair
    created = json.loads(ferry("create", old, new, "-o", Path("p"), "--json").output)
    assert created["target_sha256"] == _sha(new)
    assert created["size"] == (Path("p")).stat().st_size
    assert created["new_format"] == "gguf" and created["chunks"]["float"] >= 1
    applied = ferry("apply", old, Path("p"), "-o", Path("out"),
                    "--expect-sha256", _sha(new), "--json")  # fmt: skip
    assert json.loads(applied.output)["sha256"] == _sha(new)


def test_inspect_shows_codec_and_alignment_per_tensor(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = pair
    ferry("create", old, new, "-o", Path("p"))
    shown = ferry("inspect", Path("p"), "--old", old, "--new", new)
    assert shown.exit_code == 0, shown.output
    _fits(shown.output)
    assert "= embed.weight" in shown.output and "float" in shown.output
    data = json.loads(ferry("inspect", Path("p"), "--old", old, "--new", new,
                            "--json").output)  # fmt: skip
    embed = next(c for c in data["chunks"] if c["tensor"] == "embed.weight")
    assert embed["aligned"] is True and embed["source_tensor"] == "embed.weight"
    assert sum(c["out_size"] for c in data["chunks"]) == data["header"]["target_size"]
    assert data["size"] == (Path("p")).stat().st_size


def test_apply_with_the_wrong_expected_sha256_is_refused_and_writes_nothing(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = pair
    ferry("create", old, new, "-o", Path("p"))
    refused = ferry("apply", old, Path("p"), "-o", Path("out"),
                    "--expect-sha256", _sha(old))  # fmt: skip
    assert refused.exit_code == 1
    assert "delta_result_mismatch" in refused.output
    assert not (Path("out")).exists()


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        (lambda raw: raw[:-10], "delta_truncated"),
        (lambda raw: raw[:-200] + bytes(b ^ 0x55 for b in raw[-200:]), "delta_corrupt"),
        (lambda raw: b"NOTADELT" + raw[8:], "delta_corrupt"),
    ],
    ids=["truncated", "payload flipped", "bad magic"],
)
def test_bad_patch_is_refused_by_apply_and_inspect(
    pair: tuple[Path, Path], tmp_path: Path, damage: object, code: str
) -> None:
    old, new = pair
    ferry("create", old, new, "-o", Path("p"))
    raw = (Path("p")).read_bytes()
    (Path("bad")).write_bytes(damage(raw))  # type: ignore[operator]
    applied = ferry("apply", old, Path("bad"), "-o", Path("out"),
                    "--expect-sha256", _sha(new))  # fmt: skip
    assert applied.exit_code == 1 and code in applied.output
    assert not (Path("out")).exists()
    if code != "delta_corrupt" or raw[:8] != (Path("bad")).read_bytes()[:8]:
        inspected = ferry("inspect", Path("bad"))
        assert inspected.exit_code == 1 and "delta_" in inspected.output


def test_missing_input_and_bad_hash_are_usage_errors(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = pair
    assert ferry("create", Path("nope"), new, "-o", Path("p")).exit_code == 2
    ferry("create", old, new, "-o", Path("p"))
    bad_hash = ferry("apply", old, Path("p"), "-o", Path("o"), "--expect-sha256", "xyz")
    assert bad_hash.exit_code == 2
    assert ferry("inspect", Path("nope")).exit_code == 2


def test_the_delta_commands_need_no_server_package(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """The encoder lives in ferry.protocol: building a delta imports nothing of the server."""
    old, new = pair
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from ferry.cli import delta_cmds\n"
        f"r = CliRunner().invoke(delta_cmds.app, ['create', {str(old)!r}, {str(new)!r},"
        f" '-o', {str(tmp_path / 'p')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.startswith(('ferry.server', 'fastapi'))))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
