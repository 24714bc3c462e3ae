"""`ferry inspect`, `ferry keyring` and `ferry verify`: a downloaded bundle checked offline
against the public keyring — and refused, naming the file or signature, when tampered."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
from rich.filesize import decimal
from typer.testing import CliRunner, Result

from ferry.cli.main import app
from ferry.client import FerryClient
from tests.client.helpers import Server, push_metadata
from tests.deltas_server.models import model_pair


def ferry(
    server: Server, tmp_path: Path, *args: str | Path, env: dict[str, str] | None = None
) -> Result:
    base = {
        "FERRY_CONFIG": str(tmp_path / "cfg.toml"),
        "FERRY_SERVER": server.url,
        "FERRY_TOKEN": server.admin_token,
        "COLUMNS": "200",
    }
    return CliRunner().invoke(app, [str(a) for a in args], env={**base, **(env or {})})


def table_rows(output: str) -> list[list[str]]:
    """The cells of a rich table's body rows (the header's separators are ┃, not │)."""
    return [
        [cell.strip() for cell in line.split("│")] for line in output.splitlines() if "│" in line
    ]


def pulled(
    server: Server, admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> tuple[Path, Path, str]:
    ns, name = model
    admin.push_version(ns, name, bundle, **push_metadata())  # type: ignore[arg-type]
    dest, keyring = tmp_path / "bundle", tmp_path / "keyring.json"
    assert ferry(server, tmp_path, "pull", f"{ns}/{name}@1", "--dest", dest, "-q").exit_code == 0
    saved = ferry(server, tmp_path, "keyring", "-o", keyring)
    assert saved.exit_code == 0 and "saved keyring v" in saved.output, saved.output
    return dest, keyring, f"{ns}/{name}"


def test_a_pulled_bundle_verifies_offline_and_a_changed_byte_is_named(
    server: Server, admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> None:
    dest, keyring, ref = pulled(server, admin, model, bundle, tmp_path)
    offline = {
        "FERRY_CONFIG": str(tmp_path / "none.toml"),
        "FERRY_SERVER": "http://127.0.0.1:9",
        "FERRY_TOKEN": "",
    }
    ok = CliRunner().invoke(app, ["verify", str(dest), "--keyring", str(keyring)], env=offline)
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith(f"ok: {ref}@1 — 2 file(s)")
    weights = dest / "model.onnx"
    data = bytearray(weights.read_bytes())
    data[100] ^= 1
    weights.write_bytes(bytes(data))
    bad = CliRunner().invoke(app, ["verify", str(dest), "--keyring", str(keyring)], env=offline)
    assert bad.exit_code == 1
    assert "hash_mismatch" in bad.output and "model.onnx" in bad.output
    assert "Traceback" not in bad.output


def test_a_forged_manifest_or_a_foreign_root_is_refused(
    server: Server, admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> None:
    dest, keyring, _ = pulled(server, admin, model, bundle, tmp_path)
    foreign = ferry(
        server, tmp_path, "verify", dest, "--keyring", keyring, "--root-key-id", "0" * 64
    )
    assert foreign.exit_code == 1 and "keyring" in foreign.output and "refused" in foreign.output
    envelope = json.loads((dest / ".ferry-manifest.json").read_text())
    envelope["signed"]["files"][0]["size"] += 1
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(envelope))
    refused = ferry(server, tmp_path, "verify", dest, "--keyring", keyring, "--manifest", forged)
    assert refused.exit_code == 1 and "bad_signature" in refused.output, refused.output
    missing = ferry(
        server,
        tmp_path,
        "verify",
        tmp_path / "empty",
        "--keyring",
        keyring,
        "--manifest",
        dest / ".ferry-manifest.json",
    )
    assert missing.exit_code == 1 and "is missing from the bundle" in missing.output


def test_inspect_names_the_files_and_the_key_that_signed(
    server: Server, admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> None:
    dest, keyring, ref = pulled(server, admin, model, bundle, tmp_path)
    online = ferry(server, tmp_path, "inspect", f"{ref}@1")
    assert online.exit_code == 0, online.output
    assert f"{ref}@1" in online.output and "model.onnx" in online.output
    row = next(line for line in online.output.splitlines() if "bundles" in line)
    assert "valid" in row
    local = json.loads(
        ferry(server, tmp_path, "inspect", dest, "--keyring", keyring, "--json").output
    )
    [signature] = local["signatures"]
    assert (signature["roles"], signature["valid"]) == (["bundles"], True)
    assert sorted(f["path"] for f in local["manifest"]["files"]) == ["labels.txt", "model.onnx"]


def _fine_tuned(admin: FerryClient, model: tuple[str, str], tmp_path: Path) -> list[int]:
    """v1 and its fine-tune v2 (every weight nudged: a small delta), same labels."""
    old, new = model_pair(tmp_path / "weights", size=256 << 10)
    numbers = []
    for weights in (old, new):
        labels = weights.parent / "labels.txt"
        labels.write_text("cat\ndog\n")
        version = admin.push_version(*model, [weights, labels], **push_metadata())  # type: ignore[arg-type]
        numbers.append(version.version)
    return numbers


def _offers(server: Server, tmp_path: Path, ref: str) -> list[dict[str, Any]]:
    result = ferry(server, tmp_path, "inspect", ref, "--json")
    assert result.exit_code == 0, result.output
    offers: list[dict[str, Any]] = json.loads(result.output)["deltas"]["deltas"]
    return offers


def test_inspect_a_version_lists_the_deltas_offered_to_and_from_it(
    server: Server, admin: FerryClient, model: tuple[str, str], tmp_path: Path
) -> None:
    v1, v2 = _fine_tuned(admin, model, tmp_path)
    ref = f"{model[0]}/{model[1]}"
    before = ferry(server, tmp_path, "inspect", f"{ref}@{v2}", env={"COLUMNS": "80"})
    assert before.exit_code == 0, before.output
    assert all(len(line) <= 80 for line in before.output.splitlines()), before.output
    digest = json.loads(ferry(server, tmp_path, "inspect", f"{ref}@{v2}", "--json").output)[
        "manifest_sha256"
    ]
    assert f"      digest  {digest}" in before.output.splitlines(), "a digest is never cut"
    rows = table_rows(before.output)
    assert [r[0] for r in rows if "→" in r[0]] == [f"v{v1} → v{v2}", f"v{v2} → v{v1}"]
    assert all(r[-1] == "not built yet" for r in rows if "→" in r[0])
    said = " ".join(before.output.split())
    assert f"between v{v2} and 1 other version(s);" in said
    assert "a delta is sent when it is smaller than 60% of the file" in said
    assert "not built yet: built when a rollout starts" in said

    offered = _offers(server, tmp_path, f"{ref}@{v2}")[0]
    with httpx.Client(headers={"Authorization": f"Bearer {server.admin_token}"}) as http:
        http.get(f"{server.url}/api/v1/deltas/{offered['from_sha256']}/{offered['to_sha256']}")
        state = "building"
        while state in ("building", "not_built"):  # the server builds it in the background
            time.sleep(0.2)
            state = _offers(server, tmp_path, f"{ref}@{v2}")[0]["state"]
        assert state == "ready"
        delta = http.get(
            f"{server.url}/api/v1/deltas/{offered['from_sha256']}/{offered['to_sha256']}"
        ).content

    wide = ferry(server, tmp_path, "inspect", f"{ref}@{v2}", env={"COLUMNS": "200"})
    up = next(r for r in table_rows(wide.output) if r[0] == f"v{v1} → v{v2}")
    percent = round(100 * len(delta) / offered["size"])
    assert up[1:] == [
        "model.safetensors",
        decimal(offered["size"]),
        f"{decimal(len(delta))} ({percent}%)",
        "ready",
    ]
    down = next(r for r in table_rows(wide.output) if r[0] == f"v{v2} → v{v1}")
    assert down[3:] == ["-", "not built yet"]
    assert "labels.txt" not in [r[1] for r in table_rows(wide.output)], "same bytes: no delta"

    [ready, _] = _offers(server, tmp_path, f"{ref}@{v2}")
    assert (ready["from_version"], ready["to_version"]) == (v1, v2)
    assert (ready["delta_size"], ready["delta_sha256"]) == (
        len(delta),
        hashlib.sha256(delta).hexdigest(),
    )


def test_inspect_a_file_says_deltas_are_the_servers_and_a_lone_version_has_none(
    server: Server, admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> None:
    dest, keyring, ref = pulled(server, admin, model, bundle, tmp_path)
    local = ferry(server, tmp_path, "inspect", dest, "--keyring", keyring, env={"COLUMNS": "80"})
    assert local.exit_code == 0, local.output
    assert " ".join(local.output.split()).endswith(
        f"deltas: the server's to offer — `ferry inspect {ref}@1` lists them"
    )
    scripted = ferry(server, tmp_path, "inspect", dest, "--keyring", keyring, "--json")
    assert json.loads(scripted.output)["deltas"] is None
    alone = ferry(server, tmp_path, "inspect", f"{ref}@1")
    assert alone.output.splitlines()[-1] == f"deltas: none — {ref} has no other version"
