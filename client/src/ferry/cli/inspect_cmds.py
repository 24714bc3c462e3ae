"""`ferry inspect` (what a bundle manifest says, who signed it and, for a version on the
server, the deltas offered to and from it) and `ferry verify` (check a downloaded bundle
offline against the public keyring), plus `ferry keyring` to save that keyring for
offline use.

Verification is the protocol's own checklist (`ferry.protocol.verify`), the same the
agent and `ferry pull` run: the keyring chained to a root key, the manifest signed by
a ``bundles`` key of it, then every file's size and sha256. Nothing is trusted before
it is verified; a refusal is one line naming the file or signature and the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.filesize import decimal
from rich.markup import escape

from ferry.cli._common import client, fields, handle_errors, out, parse_ref, print_json, table
from ferry.client import MANIFEST_NAME, InputError, VerificationError
from ferry.client._trust import trusted_state
from ferry.protocol.documents import BundleManifest, Keyring, Role
from ferry.protocol.errors import ProtocolError
from ferry.protocol.signing import Envelope, parse_envelope
from ferry.protocol.verify import check_signatures, trust_first_keyring, verify_file

app = typer.Typer()

KeyringOpt = Annotated[
    Path | None,
    typer.Option(
        help="The server's public keyring (saved with `ferry keyring -o FILE`).", dir_okay=False
    ),
]
RootOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--root-key-id", help="Trust the keyring only if this root key signed it (repeat)."
    ),
]


def load_keyring(path: Path, root_key_ids: list[str] | None) -> Keyring:
    """The keyring file, verified: signed by its root (the given root key ids, if any)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the keyring {path}: {exc.strerror}") from None
    try:
        return trust_first_keyring(raw, datetime.now(UTC), set(root_key_ids or []) or None)
    except ProtocolError as exc:
        raise VerificationError(f"keyring {path} refused: {exc}", code=exc.code) from None


def signers(envelope: Envelope, keyring: Keyring | None) -> list[dict[str, Any]]:
    """Each signature: key id, the keyring role that key holds, and whether it verifies."""
    rows = []
    for sig in envelope.signatures:
        key = keyring.keys.get(sig.keyid) if keyring else None
        roles = [
            r.value
            for r, rk in (keyring.roles.items() if keyring else [])
            if sig.keyid in rk.keyids
        ]
        valid = None if key is None else key.verify(sig.sig, envelope.signed_bytes)
        rows.append({"keyid": sig.keyid, "roles": roles, "valid": valid})
    return rows


def _manifest_source(target: str) -> tuple[bytes, str]:
    """A manifest file, a pulled directory (its .ferry-manifest.json), or NS/MODEL@REF."""
    path = Path(target)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if path.is_file():
        return path.read_bytes(), str(path)
    ns, model, ref = parse_ref(target)
    if ref is None:
        raise InputError(f"{target!r} is neither a file, a pulled directory nor NS/MODEL@REF")
    with client() as ferry:
        return ferry.manifest_bytes(ns, model, ref), f"{ns}/{model}@{ref}"


def _online_keyring(target: str, root_key_ids: list[str] | None) -> Keyring | None:
    if Path(target).exists():
        return None
    with client() as ferry:
        try:
            return trusted_state(
                ferry.keyring_bytes, ferry.base_url, ferry.trust, set(root_key_ids or []) or None
            ).keyring
        except ProtocolError as exc:
            raise VerificationError(
                f"the server's keyring was refused: {exc}", code=exc.code
            ) from None


@app.command(
    "inspect",
    epilog="Examples:\n\n  ferry inspect vision/resnet@3\n\n"
    "  ferry inspect ./models/resnet --keyring keyring.json\n\n"
    "Deltas are the server's: a manifest file or a pulled directory lists none.",
)
@handle_errors
def inspect(
    target: Annotated[
        str,
        typer.Argument(help="NS/MODEL@REF, a manifest file, or a directory made by `ferry pull`."),
    ],
    keyring: KeyringOpt = None,
    root_key_id: RootOpt = None,
    versions: Annotated[
        int,
        typer.Option(
            "--versions", min=1, max=100, help="Deltas with this many nearest other versions."
        ),
    ] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a bundle manifest: model, version, files and hashes, who signed it, and the
    deltas the server offers to and from that version."""
    raw, source = _manifest_source(target)
    trusted = (
        load_keyring(keyring, root_key_id) if keyring else _online_keyring(target, root_key_id)
    )
    try:
        envelope = parse_envelope(raw)
        manifest = BundleManifest.from_dict(envelope.signed)
    except ProtocolError as exc:
        raise VerificationError(
            f"{source} is not a bundle manifest: {exc}", code=exc.code
        ) from None
    sigs = signers(envelope, trusted)
    deltas = None if Path(target).exists() else _deltas(target, manifest.version, versions)
    if as_json:
        print_json(
            {
                "source": source,
                "manifest_sha256": envelope.digest,
                "manifest": envelope.signed,
                "signatures": sigs,
                "deltas": deltas,
            }
        )
        return
    fields(
        [
            ("manifest", source),
            ("digest", envelope.digest),
            ("model", f"{manifest.full_name}@{manifest.version}"),
            ("format", f"{manifest.format} / {manifest.flavor}"),
            ("hardware", ", ".join(manifest.hardware) or "any"),
            ("created", manifest.created_at),
            ("size", f"{manifest.total_size} bytes"),
            ("io signature", manifest.signature),
        ]
    )
    table(
        ["key id", "role", "signature"],
        [
            (
                s["keyid"],
                ", ".join(s["roles"]) or "not in the keyring",
                {True: "valid", False: "INVALID", None: "not checked (no keyring)"}[s["valid"]],
            )
            for s in sigs
        ],
        title="signed by",
    )
    table(
        ["file", "size", "sha256"],
        [(f.path, f.size, f.sha256) for f in manifest.files],
        title="files",
    )
    if deltas is None:
        out.print(
            escape(
                f"deltas: the server's to offer — `ferry inspect "
                f"{manifest.full_name}@{manifest.version}` lists them"
            )
        )
    else:
        deltas_view(deltas)


def _deltas(target: str, version: int, versions: int) -> dict[str, Any]:
    """The server's offers around the manifest's own version (an alias may have moved)."""
    ns, model, _ = parse_ref(target)
    with client() as ferry:
        return ferry.version_deltas(ns, model, version, versions=versions)


STATES = {
    "ready": "ready",
    "building": "building",
    "not_built": "not built yet",
    "not_worth_it": "whole file",
    "missing_blob": "blob missing",
}


def deltas_view(answer: dict[str, Any]) -> None:
    """One row per file and pair of versions: what a device on the left version fetches."""
    name = f"{answer['namespace']}/{answer['model']}"
    others = answer["versions_total"]
    if not answer["enabled"]:
        out.print("deltas: off on this server — devices download whole files")
        return
    if not others:
        out.print(escape(f"deltas: none — {name} has no other version"))
        return
    shown = f"v{answer['version']} and {others} other version(s)"
    if answer["versions_shown"] < others:
        shown = (
            f"v{answer['version']} and the {answer['versions_shown']} nearest of {others} "
            "other versions (--versions N for more)"
        )
    if not answer["deltas"]:
        out.print(escape(f"deltas: none needed — the files of {shown} are the same"))
        return
    rows = [
        (
            f"v{d['from_version']} → v{d['to_version']}",
            d["path"],
            decimal(d["size"]),
            _delta_cell(d),
            STATES.get(d["state"], d["state"]),
        )
        for d in answer["deltas"]
    ]
    table(["versions", "file", "file size", "delta", "state"], rows, title="deltas")
    limit = round(100 * answer["max_fraction"])
    out.print(
        escape(
            f"between {shown}; a delta is sent when it is smaller than {limit}% of the "
            "file, else the whole file"
        )
    )
    if any(d["state"] == "not_built" for d in answer["deltas"]):
        out.print(
            "not built yet: built when a rollout starts, `ferry rollout plan` runs or a "
            "device asks (meanwhile devices download the whole file)"
        )


def _delta_cell(offer: dict[str, Any]) -> str:
    if offer["delta_size"] is None:
        return "-"
    return (
        f"{decimal(offer['delta_size'])} ({100 * offer['delta_size'] / max(offer['size'], 1):.0f}%)"
    )


@app.command(
    "verify",
    epilog="Example: ferry verify ./models/resnet --keyring keyring.json --root-key-id 9f1c…",
)
@handle_errors
def verify(
    directory: Annotated[Path, typer.Argument(help="The bundle's directory.", file_okay=False)],
    keyring: Annotated[
        Path,
        typer.Option(
            help="The server's public keyring (saved with `ferry keyring -o FILE`).", dir_okay=False
        ),
    ],
    manifest: Annotated[
        Path | None,
        typer.Option(
            help=f"Signed manifest (default: DIR/{MANIFEST_NAME}, as `ferry pull` saves it).",
            dir_okay=False,
        ),
    ] = None,
    root_key_id: RootOpt = None,
) -> None:
    """Check a downloaded bundle offline: keyring, manifest signature, every file's hash."""
    trusted = load_keyring(keyring, root_key_id)
    path = manifest or directory / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the manifest {path}: {exc.strerror}") from None
    try:
        envelope = parse_envelope(raw)
        declared = BundleManifest.from_dict(envelope.signed)
        check_signatures(
            envelope,
            trusted.keys_for(Role.BUNDLES),
            trusted.roles[Role.BUNDLES].threshold,
            "manifest",
        )
        for entry in declared.files:
            verify_file(directory / entry.path, entry.size, entry.sha256)
    except FileNotFoundError as exc:
        raise VerificationError(
            f"{exc.filename} is missing from the bundle", code="missing_file"
        ) from None
    except ProtocolError as exc:  # the protocol's code in the text, not a download's hint
        raise VerificationError(
            f"{directory} refused ({exc.code}): {exc}", code="bundle_refused"
        ) from None
    out.print(
        escape(
            f"ok: {declared.full_name}@{declared.version} — {len(declared.files)} "
            f"file(s), {declared.total_size} bytes, manifest {envelope.digest[:12]}… "
            f"signed by a bundles key of keyring v{trusted.version}"
        ),
        soft_wrap=True,
    )


@app.command("keyring", epilog="Example: ferry keyring -o keyring.json")
@handle_errors
def keyring_export(
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="File to write.")],
    root_key_id: RootOpt = None,
) -> None:
    """Save the server's public keyring (verified against the pinned root) for `verify`."""
    with client() as ferry:
        try:
            trusted = trusted_state(
                ferry.keyring_bytes, ferry.base_url, ferry.trust, set(root_key_id or []) or None
            ).keyring
        except ProtocolError as exc:
            raise VerificationError(
                f"the server's keyring was refused: {exc}", code=exc.code
            ) from None
        raw = ferry.keyring_bytes(trusted.version)
    output.write_bytes(raw)
    roots = ", ".join(trusted.roles[Role.ROOT].keyids)
    out.print(
        escape(f"saved keyring v{trusted.version} to {output} (root key {roots})"), soft_wrap=True
    )
