"""Server-host commands: `ferry admin create-token` mints a working scoped token."""

from __future__ import annotations

import subprocess
import sys

from tests.server.conftest import API, Harness


def _cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry.cli.server_cmds", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_create_token_on_the_host(h: Harness) -> None:
    result = _cmd(
        "admin",
        "create-token",
        "--role",
        "publisher",
        "--namespace",
        "vision",
        "--name",
        "ci",
        "--data-dir",
        str(h.settings.data_dir),
    )
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip()
    assert secret.startswith("fry_")
    me = h.client.get(f"{API}/whoami", headers={"Authorization": f"Bearer {secret}"}).json()
    assert me == {"name": "ci", "role": "publisher", "namespaces": ["vision"]}
    last = h.client.get(f"{API}/audit?limit=1000", headers=h.admin).json()[-1]
    assert (last["actor"], last["action"]) == ("server-cli", "token.create")


def test_create_token_refuses_unknown_roles(h: Harness) -> None:
    for role in ("root", "device"):
        result = _cmd(
            "admin",
            "create-token",
            "--role",
            role,
            "--name",
            "x",
            "--data-dir",
            str(h.settings.data_dir),
        )
        assert result.returncode != 0 and "role must be one of" in result.stderr
