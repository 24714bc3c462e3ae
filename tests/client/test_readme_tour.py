"""The README's "A tour in commands", run from the README text itself.

The shell block is taken as written and run by bash, with only these rewrites
(each named in `REWRITES`): a free port instead of 8080, a wait for the server
after it starts, the token it printed instead of ``fre_…``, 20 simulated devices
that do not fail instead of 500 of which 2 % do (so the outcome is not left to chance
in a small fleet), a 1 s bake instead of 600 and a bound on `rollout wait`. A
command that changes in the README changes here; one that breaks fails this test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.client.helpers import SIGNATURE, free_port

README = Path(__file__).resolve().parents[2] / "README.md"
BIN = Path(sys.executable).parent


def tour_block() -> str:
    text = README.read_text()
    section = text[text.index("## A tour in commands") :]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "the README tour has no ```sh block"
    return match.group(1)


def rewrites(port: int) -> list[tuple[str, str]]:
    """(README text, what the test runs instead) — each must occur in the tour."""
    return [
        ("8080", str(port)),
        (
            "--port {port} &\n",
            "--port {port} &\n" + f"until curl -sf http://127.0.0.1:{port}/healthz"
            " >/dev/null; do sleep 0.2; done\n",
        ),
        (
            (
                "ferry enrollment-token create vision line-3 --unlimited --expires-in 86400\n"
                "TOKEN=fre_…"
            ),
            (
                "TOKEN=$(ferry enrollment-token create vision line-3 --unlimited "
                "--expires-in 86400 | tail -1)"
            ),
        ),
        ("--devices 500 --fail-rate 0.02", "--devices 20 --fail-rate 0"),  # not left to chance
        ("--bake 600", "--bake 1"),
        ("ferry rollout wait r-1", "ferry rollout wait r-1 --timeout 150"),
    ]


def runnable(block: str, port: int) -> str:
    for old, new in rewrites(port):
        old, new = old.replace("{port}", str(port)), new.replace("{port}", str(port))
        assert old in block, f"the README tour no longer contains {old!r}"
        block = block.replace(old, new)
    return "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + block


def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(os.urandom(4096))
    (tmp_path / "signature.json").write_text(str(SIGNATURE).replace("'", '"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(
        {
            "PATH": f"{BIN}:{env['PATH']}",
            "FERRY_CONFIG": str(tmp_path / "config.toml"),
            "FERRY_MQTT_PORT": str(free_port()),
            "RUN_ID": "run-1",
            "GIT_SHA": "3f2a9c1",
            "COLUMNS": "100",
        }
    )
    script = runnable(tour_block(), free_port())
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "pushed vision/detector@1" in out
    assert "plan: vision/detector@1 → hw=x86_64" in out
    assert re.search(r"r-1 completed: (\d+)/\1 committed", out) or "r-1 completed" in out, out
    assert "Traceback" not in out
