"""`ferry inspect`, `ferry keyring` and `ferry verify`: a downloaded bundle checked offline
against the public keyring — and refused, naming the file or signature, when tampered."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner, Result

from ferry.cli.main import app
from ferry.client import FerryClient
from tests.client.helpers import Server, push_metadata


def ferry(server: Server, tmp_path: Path, *args: str | Path) -> Result:
    env = {
        "FERRY_CONFIG": str(tmp_path / "cfg.toml"),
        "FERRY_SERVER": server.url,
        "FERRY_TOKEN": server.admin_token,
        "COLUMNS": "200",
    }
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


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
