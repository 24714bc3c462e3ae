"""The agent stays small: no web framework, ORM, typer, rich or numpy is ever imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.conftest import REPO_ROOT

FORBIDDEN = (
    "fastapi",
    "sqlmodel",
    "sqlalchemy",
    "uvicorn",
    "typer",
    "rich",
    "numpy",
    "starlette",
    "pydantic",
)
MODULES = [
    "ferry.agent", "ferry.agent.cli", "ferry.agent.config", "ferry.agent.daemon", "ferry.agent.download",
    "ferry.agent.enroll", "ferry.agent.errors", "ferry.agent.identity", "ferry.agent.installer",
    "ferry.agent.log", "ferry.agent.machine", "ferry.agent.mqtt", "ferry.agent.probe",
    "ferry.agent.probe_runner", "ferry.agent.reports", "ferry.agent.storage", "ferry.agent.transport",
]  # fmt: skip


# A device has only the base dependencies. The dev venv has the server extras too,
# and httpx imports rich/click for its own CLI when they happen to be installed, so
# the subprocess hides the forbidden packages as a device would not have them, and
# proves that every agent module imports and that none of them got loaded anyway.
_DEVICE_LIKE = (
    "import importlib, importlib.abc, json, sys\n"
    "class Absent(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in FORBIDDEN: raise ImportError(f'{name} is not installed on a device')\n"
    "sys.meta_path.insert(0, Absent())\n"
)


def test_agent_imports_none_of_the_server_side_dependencies() -> None:
    code = (
        f"FORBIDDEN = {FORBIDDEN!r}\n"
        + _DEVICE_LIKE
        + f"for name in {MODULES!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert "ferry" in loaded and "httpx" in loaded  # the probe itself works
    assert loaded.isdisjoint(FORBIDDEN), sorted(loaded & set(FORBIDDEN))


def test_no_agent_module_names_a_forbidden_package() -> None:
    for path in (REPO_ROOT / "agent" / "src").rglob("*.py"):
        imports = [
            line.split()[1]
            for line in path.read_text().splitlines()
            if line.startswith(("import ", "from "))
        ]
        assert not [name for name in imports if name.split(".")[0] in FORBIDDEN], path


def test_ferry_agent_help_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ferry.agent.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and "enroll" in result.stdout and "rollback" in result.stdout


@pytest.mark.slow
def test_a_device_venv_with_the_agent_alone_installs_no_server_dependency(tmp_path: Path) -> None:
    """``pip install ./protocol ./agent`` (what a device does) into a fresh venv."""
    venv = tmp_path / "device"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(REPO_ROOT / "protocol"),
            str(REPO_ROOT / "agent"),
        ],
        check=True,
        timeout=600,
        env=env,
        capture_output=True,
    )
    frozen = subprocess.run(
        [str(python), "-m", "pip", "freeze"],
        check=True,
        text=True,
        capture_output=True,
        timeout=120,
    ).stdout
    installed = {
        line.split("==")[0].split(" @ ")[0].lower().replace("_", "-")
        for line in frozen.splitlines()
        if line
    }
    assert {"ferry-agent", "ferry-protocol", "httpx", "paho-mqtt"} <= installed
    assert not installed & ({*FORBIDDEN, "ferry-server", "ferry-client", "alembic", "psycopg"})
    shown = subprocess.run(
        [str(venv / "bin" / "ferry-agent"), "--help"],
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0 and "enroll" in shown.stdout
