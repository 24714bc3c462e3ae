"""The `ferry` CLI: in-process through CliRunner, plus real subprocess runs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from ferry.cli.main import app
from ferry.client import FerryClient
from tests.client.helpers import FERRY, SIGNATURE, Server, free_port

PUSH_FLAGS = [
    "--format",
    "onnx",
    "--flavor",
    "onnxruntime",
    "--hardware",
    "x86_64",
    "--created-by",
    "ci@team",
    "--run-id",
    "run-7",
    "--git-commit",
    "3f2a9c1",
]


@pytest.fixture
def env(server: Server, tmp_path: Path) -> dict[str, str]:
    """Environment for one test: its own config file, the admin token."""
    return {
        "FERRY_CONFIG": str(tmp_path / "cfg" / "config.toml"),
        "FERRY_SERVER": server.url,
        "FERRY_TOKEN": server.admin_token,
        "COLUMNS": "200",
    }


@pytest.fixture
def sig(tmp_path: Path) -> Path:
    path = tmp_path / "sig.json"
    path.write_text(json.dumps(SIGNATURE))
    return path


def ferry(env: dict[str, str], *args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def ok(env: dict[str, str], *args: str | Path) -> Result:
    result = ferry(env, *args)
    assert result.exit_code == 0, result.output
    return result


def as_json(result: Result) -> object:
    return json.loads(result.stdout)


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], bool]]:
    """Every (command path, is a group) below ``group``."""
    for name, command in group.commands.items():
        is_group = hasattr(command, "commands")
        yield (*prefix, name), is_group
        if is_group:
            yield from _commands(command, (*prefix, name))


SERVER_SIDE = {("server",), ("admin",), ("keys",), ("audit", "verify")}
CLIENT_COMMANDS = sorted(
    c
    for c in _commands(typer.main.get_group(app))
    if not any(c[0][: len(s)] == s for s in SERVER_SIDE)
)


@pytest.mark.parametrize(
    ("command", "is_group"), CLIENT_COMMANDS, ids=[" ".join(c) for c, _ in CLIENT_COMMANDS]
)
def test_every_command_has_help_with_summary_and_example(
    command: tuple[str, ...], is_group: bool
) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    if not is_group:
        assert "Example" in result.output, f"`ferry {' '.join(command)} --help` shows no example"


def test_configure_writes_private_file_and_env_overrides_it(server: Server, tmp_path: Path) -> None:
    cfg = tmp_path / "c" / "config.toml"
    base = {"FERRY_CONFIG": str(cfg)}
    ok(base, "configure", "--server", server.url + "/", "--token", server.admin_token)
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert f'server = "{server.url}"' in cfg.read_text()
    bad = ferry(base, "configure", "--server", "ferry.example.com")
    assert bad.exit_code == 2 and "must start with http://" in bad.stderr
    assert as_json(ok(base, "whoami", "--json"))["role"] == "admin"  # type: ignore[index]
    refused = ferry({**base, "FERRY_TOKEN": "fry_not_a_token"}, "whoami")
    assert refused.exit_code == 1
    assert "401 unauthenticated" in refused.stderr and "ferry configure --token" in refused.stderr
    assert "Traceback" not in refused.output


def test_no_config_says_how_to_configure(tmp_path: Path) -> None:
    result = ferry(
        {"FERRY_CONFIG": str(tmp_path / "none.toml"), "FERRY_SERVER": "", "FERRY_TOKEN": ""},
        "whoami",
    )
    assert result.exit_code == 1 and "ferry configure --server" in result.stderr


def test_unreachable_server_is_one_line_exit_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = ferry(
        {"FERRY_CONFIG": str(tmp_path / "c.toml"), "FERRY_SERVER": url, "FERRY_TOKEN": "fry_x"},
        "namespace",
        "list",
    )
    assert result.exit_code == 1
    assert "unreachable" in result.stderr and f"{url}/healthz" in result.stderr
    assert "Traceback" not in result.output


def test_pipeline_push_approver_promote_operator_pull(
    env: dict[str, str], namespace: str, sig: Path, tmp_path: Path
) -> None:
    ok(env, "model", "create", f"{namespace}/detector", "--tag", "yolo")
    weights = tmp_path / "w.onnx"
    weights.write_bytes(os.urandom(2 * 1024 * 1024 + 3))
    meta = tmp_path / "meta.yaml"
    meta.write_text(
        "format: tflite\nrun_id: from-file\nmetrics: {accuracy: 0.5, f1: 0.8}\n"
        "training_data: {digest: 'sha256:abc', version: '2026-11'}\n"
    )
    pushed = as_json(
        ok(
            env,
            "push",
            f"{namespace}/detector",
            weights,
            "--metadata",
            meta,
            *PUSH_FLAGS,
            "--signature",
            sig,
            "--metric",
            "accuracy=0.93",
            "--param",
            "lr=0.001",
            "--param",
            "optimizer=adam",
            "--tag",
            "t1",
            "--json",
            "--quiet",
        )
    )
    assert isinstance(pushed, dict)
    assert pushed["format"] == "onnx", "flags override the metadata file"
    assert pushed["metadata"]["run_id"] == "run-7"
    assert pushed["metadata"]["metrics"] == {"accuracy": 0.93, "f1": 0.8}
    assert pushed["metadata"]["hyperparameters"] == {"lr": 0.001, "optimizer": "adam"}
    assert pushed["metadata"]["training_data"]["version"] == "2026-11"
    ref = f"{namespace}/detector@{pushed['version']}"

    early = ferry(env, "promote", ref, "Production")
    assert early.exit_code == 1 and "409 conflict" in early.stderr and "Staging" in early.stderr
    ok(env, "promote", ref, "staging")
    ok(env, "promote", ref, "Production", "--comment", "eval #42")
    ok(env, "alias", "set", ref, "champion")
    ok(env, "tag", "add", ref, "reviewed")
    shown = as_json(ok(env, "show", f"{namespace}/detector@champion", "--json"))
    assert isinstance(shown, dict)
    assert (shown["stage"], shown["aliases"]) == ("Production", ["champion"])
    assert "reviewed" in shown["tags"]
    found = as_json(
        ok(
            env,
            "search",
            "--namespace",
            namespace,
            "--stage",
            "production",
            "--metric",
            "accuracy>=0.9",
            "--json",
        )
    )
    assert [v["version"] for v in found] == [pushed["version"]]  # type: ignore[union-attr]
    assert (
        as_json(ok(env, "search", "--namespace", namespace, "--metric", "f1>0.9", "--json")) == []
    )
    listing = ok(env, "versions", f"{namespace}/detector")
    assert ref in listing.stdout and "Production" in listing.stdout

    dest = tmp_path / "pulled"
    pulled = ok(env, "pull", f"{namespace}/detector@champion", "--dest", dest)
    assert "verified" in pulled.stdout
    assert (dest / "w.onnx").read_bytes() == weights.read_bytes()
    ok(env, "tag", "remove", ref, "reviewed")
    ok(env, "alias", "delete", f"{namespace}/detector", "champion")
    assert as_json(ok(env, "model", "show", f"{namespace}/detector", "--json"))["aliases"] == {}  # type: ignore[index]


def test_list_commands_print_json(env: dict[str, str], namespace: str) -> None:
    ok(env, "model", "create", f"{namespace}/m1")
    assert namespace in [n["name"] for n in as_json(ok(env, "namespace", "list", "--json"))]  # type: ignore[union-attr]
    models = as_json(ok(env, "model", "list", "--namespace", namespace, "--json"))
    assert [m["name"] for m in models] == ["m1"]  # type: ignore[union-attr]
    assert as_json(ok(env, "versions", f"{namespace}/m1", "--json")) == []
    table = ok(env, "model", "list", "--namespace", namespace)
    assert f"{namespace}/m1" in table.stdout


def test_token_commands_and_audit(env: dict[str, str], namespace: str, tmp_path: Path) -> None:
    created = as_json(
        ok(env, "token", "create", "bot", "--role", "viewer", "-n", namespace, "--json")
    )
    assert isinstance(created, dict) and created["token"].startswith("fry_")
    listed = as_json(ok(env, "token", "list", "--json"))
    assert created["id"] in [t["id"] for t in listed]  # type: ignore[union-attr]
    assert all(t.get("token") is None for t in listed)  # type: ignore[union-attr]
    viewer_env = {**env, "FERRY_TOKEN": created["token"]}
    denied = ferry(viewer_env, "model", "create", f"{namespace}/nope")
    assert denied.exit_code == 1 and "403 forbidden" in denied.stderr
    ok(env, "token", "revoke", str(created["id"]))
    assert ferry(viewer_env, "whoami").exit_code == 1

    entries = as_json(ok(env, "audit", "list", "--limit", "1000", "--json"))
    assert any(e["action"].startswith("token") for e in entries)  # type: ignore[union-attr]
    out = tmp_path / "audit.jsonl"
    ok(env, "audit", "export", "--output", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all("hash" in r for r in rows)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--metric", "accuracy"], "malformed --metric 'accuracy'"),
        (["--metric", "accuracy=high"], "'high' is not a number"),
        (["--param", "=3"], "malformed --param"),
    ],
)
def test_push_refuses_malformed_pairs(
    env: dict[str, str], sig: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x")
    result = ferry(env, "push", "a/b", weights, *PUSH_FLAGS, "--signature", sig, *args)
    assert result.exit_code == 2 and needle in result.stderr, result.output


def test_search_refuses_malformed_metric(env: dict[str, str]) -> None:
    result = ferry(env, "search", "--metric", "accuracy=>0.9")
    assert result.exit_code == 2
    assert "malformed metric filter 'accuracy=>0.9'" in result.stderr


def test_push_unknown_file_names_it(
    env: dict[str, str], namespace: str, sig: Path, tmp_path: Path
) -> None:
    ok(env, "model", "create", f"{namespace}/m")
    missing = tmp_path / "missing.onnx"
    result = ferry(env, "push", f"{namespace}/m", missing, *PUSH_FLAGS, "--signature", sig)
    assert result.exit_code == 2
    assert str(missing) in result.stderr and "does not exist" in result.stderr


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("meta.yaml", "format: [unclosed", "is not valid YAML"),
        ("meta.json", '{"format": ', "is not valid JSON"),
        ("meta.yaml", "formt: onnx\n", "unknown key 'formt'"),
        ("meta.yaml", "metrics: 0.9\n", "'metrics' must be a mapping"),
        ("meta.yaml", "- a\n- b\n", "must hold a mapping"),
    ],
)
def test_bad_metadata_file_names_the_problem(
    env: dict[str, str], sig: Path, tmp_path: Path, name: str, text: str, needle: str
) -> None:
    meta = tmp_path / name
    meta.write_text(text)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x")
    result = ferry(env, "push", "a/b", weights, "--metadata", meta, "--signature", sig)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and str(meta) in result.stderr


def test_push_without_required_metadata_names_the_missing_fields(
    env: dict[str, str], tmp_path: Path
) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x")
    result = ferry(env, "push", "a/b", weights, "--format", "onnx")
    assert result.exit_code == 2
    assert "missing required metadata: flavor, signature, created_by" in result.stderr


def test_bad_reference_is_a_usage_error(env: dict[str, str]) -> None:
    result = ferry(env, "promote", "just-a-name", "Production")
    assert result.exit_code == 2 and "is not NS/MODEL" in result.stderr
    result = ferry(env, "promote", "a/b", "Production")
    assert result.exit_code == 2 and "names no version" in result.stderr
    result = ferry(env, "promote", "a/b@1", "Live")
    assert result.exit_code == 2 and "unknown stage 'Live'" in result.stderr


def test_pull_of_tampered_blob_is_refused(
    server: Server, env: dict[str, str], namespace: str, sig: Path, tmp_path: Path
) -> None:
    ok(env, "model", "create", f"{namespace}/m")
    weights = tmp_path / "w.bin"
    weights.write_bytes(os.urandom(100_000))
    pushed = as_json(
        ok(env, "push", f"{namespace}/m", weights, *PUSH_FLAGS, "--signature", sig, "--json", "-q")
    )
    sha = pushed["files"][0]["sha256"]  # type: ignore[index]
    server.blob_path(sha).write_bytes(os.urandom(100_000))
    dest = tmp_path / "out"
    result = ferry(env, "pull", f"{namespace}/m@1", "--dest", dest)
    assert result.exit_code == 1
    assert "hash_mismatch" in result.stderr and "Traceback" not in result.output
    assert not (dest / "w.bin").exists()


def test_subprocess_help_and_push_pull_round_trip(
    server: Server, namespace: str, sig: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "FERRY_CONFIG": str(tmp_path / "config.toml"),
        "FERRY_SERVER": server.url,
        "FERRY_TOKEN": server.admin_token,
    }
    help_run = subprocess.run(
        [str(FERRY), "--help"], env=env, capture_output=True, text=True, check=True
    )
    for command in ("push", "pull", "promote", "search", "configure"):
        assert command in help_run.stdout
    with FerryClient(server.url, server.admin_token) as admin:
        admin.create_model(namespace, "sub")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(os.urandom(1_500_000))
    subprocess.run(
        [
            str(FERRY),
            "push",
            f"{namespace}/sub",
            str(weights),
            *PUSH_FLAGS,
            "--signature",
            str(sig),
        ],
        env=env,
        capture_output=True,
        check=True,
    )
    dest = tmp_path / "pulled"
    pulled = subprocess.run(
        [str(FERRY), "pull", f"{namespace}/sub", "--dest", str(dest)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "verified" in pulled.stdout
    assert (dest / weights.name).read_bytes() == weights.read_bytes()
    assert "[pins." in (tmp_path / "config.toml").read_text(), "the root key was pinned (TOFU)"


def test_pushing_the_same_bytes_with_new_metadata_says_nothing_was_pushed(
    env: dict[str, str], model: tuple[str, str], bundle: list[Path], sig: Path
) -> None:
    ns, name = model
    first = ok(env, "push", f"{ns}/{name}", *bundle, "--signature", sig, *PUSH_FLAGS, "-q")
    assert first.stdout.startswith(f"pushed {ns}/{name}@1 ")
    ok(env, "promote", f"{ns}/{name}@1", "Staging")
    ok(env, "promote", f"{ns}/{name}@1", "Archived")
    again_flags = [f if f != "run-7" else "run-8" for f in PUSH_FLAGS]
    again = ok(env, "push", f"{ns}/{name}", *bundle, "--signature", sig, *again_flags, "-q")
    text = " ".join(again.stdout.split())
    assert "pushed" not in text.replace("not pushed", "")
    assert text.startswith(
        f"not pushed: {ns}/{name}@1 (stage Archived) already has exactly "
        "these files; nothing was registered"
    )
    assert "differs in metadata.run_id" in text and "--new-version" in text
    scripted = as_json(
        ok(env, "push", f"{ns}/{name}", *bundle, "--signature", sig, *again_flags, "-q", "--json")
    )
    assert scripted["existing"] is True and scripted["version"] == 1  # type: ignore[index]
    assert scripted["differences"] == ["metadata.run_id"]  # type: ignore[index]

    fresh = ok(
        env,
        "push",
        f"{ns}/{name}",
        *bundle,
        "--signature",
        sig,
        *again_flags,
        "-q",
        "--new-version",
    )
    assert fresh.stdout.startswith(f"pushed {ns}/{name}@2 ")
    shown = as_json(ok(env, "show", f"{ns}/{name}@2", "--json"))
    assert shown["metadata"]["run_id"] == "run-8"  # type: ignore[index]
    retried = as_json(
        ok(env, "push", f"{ns}/{name}", *bundle, "--signature", sig, *PUSH_FLAGS, "-q", "--json")
    )
    assert (retried["version"], retried["existing"], retried["differences"]) == (  # type: ignore[index]
        1,
        True,
        [],
    ), "a retried push of the original is still idempotent"
    same = ok(env, "push", f"{ns}/{name}", *bundle, "--signature", sig, *PUSH_FLAGS, "-q")
    assert " ".join(same.stdout.split()) == (
        f"not pushed: {ns}/{name}@1 (stage Archived) "
        "already has exactly these files; nothing was "
        "registered"
    )
