"""Streaming file transfer: hash and read files in chunks, download and verify bundles.

Nothing is written under its final name before it is verified: each file is
streamed into a temp file in the destination folder through a ``FileVerifier``
(size cap enforced while streaming, sha256 checked at the end), fsynced, then
``os.replace``d into place.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from ferry.client._errors import InputError, VerificationError
from ferry.client._models import DownloadResult, TransferProgress, Version
from ferry.client._trust import trusted_state
from ferry.protocol.documents import BundleManifest, FileEntry
from ferry.protocol.errors import ProtocolError
from ferry.protocol.trust import TrustedState
from ferry.protocol.verify import FileVerifier, verify_file

if TYPE_CHECKING:
    from ferry.client._client import FerryClient, ProgressCallback

CHUNK = 1024 * 1024
MANIFEST_NAME = ".ferry-manifest.json"


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, read in chunks (never whole)."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def iter_file(path: Path, chunk_size: int, on_chunk: Callable[[int], None]) -> Iterator[bytes]:
    """Yield a file's bytes chunk by chunk, reporting the running total after each."""
    done = 0
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            done += len(chunk)
            yield chunk
            on_chunk(done)


def download_bundle(
    client: FerryClient,
    version: Version,
    dest: Path,
    *,
    progress: ProgressCallback | None,
    root_keyid: str | None,
    hardware: str | None,
) -> DownloadResult:
    """Verify the version's manifest, then fetch every file into ``dest`` (see module doc)."""
    try:
        trust = trusted_state(
            client.keyring_bytes,
            client.base_url,
            client.trust,
            {root_keyid} if root_keyid else None,
        )
        raw = client.manifest_bytes(version.namespace, version.model, version.version)
        manifest = _verified_manifest(raw, trust, version, hardware)
        dest.mkdir(parents=True, exist_ok=True)
        written = 0
        for entry in manifest.files:
            written += _fetch_file(client, entry, dest, progress)
        _write_atomic(dest / MANIFEST_NAME, raw)
    except ProtocolError as exc:
        raise VerificationError(f"refused {version.ref}: {exc}", code=exc.code) from exc
    return DownloadResult(
        namespace=manifest.namespace,
        model=manifest.model,
        version=manifest.version,
        manifest_sha256=version.manifest_sha256,
        dest_dir=dest,
        files=[dest / e.path for e in manifest.files],
        bytes_downloaded=written,
    )


def _verified_manifest(
    raw: bytes, trust: TrustedState, version: Version, hardware: str | None
) -> BundleManifest:
    """Signature, digest and hardware by the protocol checklist, then the binding to
    the version asked for (a validly signed manifest of another model is refused).
    No hardware given: an operator's pull, not a device install; any hardware goes."""
    manifest = trust.verify_manifest(
        raw,
        expected_sha256=version.manifest_sha256,
        hardware=hardware,
        installed_version=None,
        allow_downgrade=True,
    ).document
    asked = (version.namespace, version.model, version.version)
    got = (manifest.namespace, manifest.model, manifest.version)
    if got != asked:
        raise VerificationError(
            f"the server sent the manifest of {got[0]}/{got[1]}@{got[2]} for {version.ref}",
            code="manifest_mismatch",
        )
    return manifest


def _fetch_file(
    client: FerryClient, entry: FileEntry, dest: Path, progress: ProgressCallback | None
) -> int:
    """Stream one blob into place; returns bytes downloaded (0 when already present)."""
    target = dest / entry.path
    if _already_there(target, entry):
        tick(progress, TransferProgress(entry.path, entry.size, entry.size, skipped=True))
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        raise InputError(f"cannot write {target}: a directory is in the way")
    verifier = FileVerifier(entry.size, entry.sha256, what=entry.path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, client.stream_bytes(f"/blobs/{entry.sha256}") as chunks:
            for chunk in chunks:
                verifier.update(chunk)
                out.write(chunk)
                tick(progress, TransferProgress(entry.path, verifier.received, entry.size))
            verifier.finish()
            out.flush()
            os.fsync(out.fileno())
        _publish(tmp, target)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
    return entry.size


def _already_there(target: Path, entry: FileEntry) -> bool:
    if not target.is_file() or target.stat().st_size != entry.size:
        return False
    try:
        verify_file(target, entry.size, entry.sha256)
    except ProtocolError:
        return False
    return True


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        _publish(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def _publish(tmp: str, target: Path) -> None:
    """Give the verified temp file ordinary permissions (mkstemp makes it 0600), then
    rename it into place in one step."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, target)


def tick(progress: ProgressCallback | None, event: TransferProgress) -> None:
    if progress is not None:
        progress(event)
