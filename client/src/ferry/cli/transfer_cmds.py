"""`ferry push` (upload and register a version) and `ferry pull` (verified download)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape

from ferry.cli._common import (
    as_ref,
    client,
    handle_errors,
    out,
    parse_pairs,
    parse_ref,
    print_json,
    transfer_bar,
)
from ferry.client import InputError, Version

app = typer.Typer()

# Keys a --metadata file may hold, with the type each must have.
METADATA_KEYS: dict[str, type] = {
    "format": str,
    "flavor": str,
    "signature": dict,
    "hardware": list,
    "created_by": str,
    "run_id": str,
    "git_commit": str,
    "metrics": dict,
    "hyperparameters": dict,
    "training_data": dict,
    "environment_hash": str,
    "model_card": str,
    "tags": list,
}
_KIND: dict[type, str] = {dict: "mapping", list: "list", str: "string"}
REQUIRED = ("format", "flavor", "signature", "created_by", "run_id", "git_commit")

PUSH_EPILOG = """Examples:

  ferry push vision/resnet model.onnx labels.txt \\
    --format onnx --flavor onnxruntime --signature sig.json \\
    --hardware x86_64 --created-by ci@team --run-id 1234 \\
    --git-commit 3f2a9c1 --metric accuracy=0.93 --param lr=0.001

  ferry push vision/resnet model.onnx --metadata meta.yaml

A --metadata file (YAML or JSON) may hold: format, flavor,
signature, hardware, created_by, run_id, git_commit, metrics,
hyperparameters, training_data, environment_hash, model_card,
tags. Flags override the file."""


def load_structured(path: Path, what: str) -> Any:
    """Read a JSON or YAML file, naming the file and the problem on failure."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"{what} file {path} is not valid "
            f"{'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {first}"
        ) from exc


def load_metadata(path: Path) -> dict[str, Any]:
    data = load_structured(path, "metadata")
    if not isinstance(data, dict):
        raise InputError(
            f"metadata file {path} must hold a mapping of keys ({', '.join(METADATA_KEYS)})"
        )
    unknown = sorted(set(data) - set(METADATA_KEYS))
    if unknown:
        raise InputError(
            f"metadata file {path}: unknown key {unknown[0]!r}; allowed keys are "
            f"{', '.join(METADATA_KEYS)}"
        )
    for key, value in data.items():
        if not isinstance(value, METADATA_KEYS[key]):
            raise InputError(
                f"metadata file {path}: {key!r} must be a "
                f"{_KIND[METADATA_KEYS[key]]}, not {type(value).__name__}"
            )
    return dict(data)


def load_signature(path: Path) -> dict[str, Any]:
    data = load_structured(path, "signature")
    if not isinstance(data, dict) or not {"inputs", "outputs"} <= set(data):
        raise InputError(f"signature file {path} must be a mapping with 'inputs' and 'outputs'")
    return data


def merge_metadata(base: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Flags override the file; metrics, params and tags merge key by key."""
    merged = dict(base)
    for key, value in flags.items():
        if value in (None, [], {}):
            continue
        if key in ("metrics", "hyperparameters"):
            merged[key] = {**(merged.get(key) or {}), **value}
        elif key in ("tags", "hardware"):
            merged[key] = list(dict.fromkeys([*(merged.get(key) or []), *value]))
        else:
            merged[key] = value
    missing = [k for k in REQUIRED if not merged.get(k)]
    if missing:
        raise InputError(
            f"missing required metadata: {', '.join(missing)} (give "
            f"--{missing[0].replace('_', '-')} or put it in a --metadata file)"
        )
    return merged


@app.command(epilog=PUSH_EPILOG)
@handle_errors
def push(
    name: Annotated[str, typer.Argument(help="NS/MODEL to add a version to.")],
    files: Annotated[list[Path], typer.Argument(help="Files of the bundle (kept by base name).")],
    metadata: Annotated[Path | None, typer.Option(help="YAML or JSON file with metadata.")] = None,
    format: Annotated[str | None, typer.Option("--format", help="e.g. onnx, safetensors.")] = None,
    flavor: Annotated[str | None, typer.Option(help="Runtime, e.g. onnxruntime.")] = None,
    signature: Annotated[
        Path | None, typer.Option(help="JSON/YAML file with inputs and outputs.")
    ] = None,
    hardware: Annotated[
        list[str] | None, typer.Option(help="Compatible hardware (repeat); none = any.")
    ] = None,
    created_by: Annotated[str | None, typer.Option(help="Who trained it, e.g. ci@team.")] = None,
    run_id: Annotated[str | None, typer.Option(help="Training run id.")] = None,
    git_commit: Annotated[str | None, typer.Option(help="Commit of the training code.")] = None,
    metric: Annotated[list[str] | None, typer.Option(help="NAME=NUMBER (repeat).")] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="Hyperparameter NAME=VALUE (repeat).")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Version tag (repeat).")] = None,
    new_version: Annotated[
        bool,
        typer.Option(
            help="Register a new version even when an existing one has exactly these files."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new version as JSON.")] = False,
) -> None:
    """Upload files (skipping ones the server has) and register a new version."""
    ns, model, ref = parse_ref(name)
    if ref is not None:
        raise InputError(f"{name!r}: the server numbers versions; push to {ns}/{model}")
    flags = {
        "format": format,
        "flavor": flavor,
        "created_by": created_by,
        "run_id": run_id,
        "git_commit": git_commit,
        "hardware": hardware or [],
        "tags": tag or [],
        "signature": load_signature(signature) if signature else None,
        "metrics": parse_pairs(metric or [], "--metric", numeric=True),
        "hyperparameters": parse_pairs(param or [], "--param", numeric=False),
    }
    meta = merge_metadata(load_metadata(metadata) if metadata else {}, flags)
    with client() as ferry, transfer_bar("upload", enabled=not quiet) as progress:
        version = ferry.push_version(
            ns, model, files, progress=progress, new_version=new_version, **meta
        )
    if as_json:
        print_json(version.to_json())
    elif version.existing:
        out.print(escape(existing_line(version)), soft_wrap=True)
    else:
        out.print(
            f"pushed {version.ref} (manifest {version.manifest_sha256[:12]}…, "
            f"{len(version.files)} file(s))"
        )


def existing_line(version: Version) -> str:
    """Nothing was registered: say which version already holds these files, and how to
    make a new one — never "pushed"."""
    line = (
        f"not pushed: {version.ref} (stage {version.stage}) already has exactly these "
        f"files; nothing was registered"
    )
    if version.differences:
        line += (
            f". Your metadata differs in {', '.join(version.differences)}; "
            f"{version.ref} keeps its own. To register these files as a new version "
            f"with your metadata, push again with --new-version"
        )
    return line


@app.command(
    epilog="Examples:\n\n  ferry pull vision/resnet@champion --dest ./models/resnet\n\n"
    "  ferry pull vision/resnet@3 --dest out --root-key-id 9f1c…"
)
@handle_errors
def pull(
    name: Annotated[str, typer.Argument(help="NS/MODEL@REF (version or alias); no @REF = latest.")],
    dest: Annotated[
        Path, typer.Option(help="Directory to write the bundle into.", file_okay=False)
    ],
    root_key_id: Annotated[
        str | None,
        typer.Option(help="Trust only this root key id (else the root pinned on first use)."),
    ] = None,
    hardware: Annotated[
        str | None, typer.Option(help="Refuse bundles not built for this hardware.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Download a version, verifying signature, sizes and hashes before anything is kept."""
    ns, model, ref = parse_ref(name)
    with client() as ferry:
        if ref is None:
            latest = ferry.get_model(ns, model).latest_version
            if latest is None:
                raise InputError(f"{ns}/{model} has no versions yet")
            ref = str(latest)
        with transfer_bar("download", enabled=not quiet) as progress:
            result = ferry.download_version(
                ns,
                model,
                as_ref(ref),
                dest,
                progress=progress,
                root_keyid=root_key_id,
                hardware=hardware,
            )
    if as_json:
        print_json(result.to_json())
        return
    out.print(
        f"verified {result.namespace}/{result.model}@{result.version} into {result.dest_dir} "
        f"({len(result.files)} file(s), {result.bytes_downloaded} bytes downloaded)"
    )
