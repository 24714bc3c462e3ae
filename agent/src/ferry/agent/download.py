"""Fetch a verified manifest's files into staging: Range resume, size caps, deltas.

Every byte passes through a ``FileVerifier`` while it streams, so a server that
sends more than the manifest declares is cut off at the first chunk past the
size (``length_exceeded``) and nothing beyond it reaches the disk. A file is
renamed from ``.part`` to its name only after its length and sha256 matched and
its data was fsynced.

Deltas plug in per file: when the running version has a file at the same path,
``GET /deltas/{old sha256}/{new sha256}`` is tried first and applied with
``ferry.protocol.delta``; any failure falls back to the full download.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ferry.agent.config import DownloadConfig
from ferry.agent.crashpoints import crashpoint
from ferry.agent.errors import (
    AgentError,
    DiskFullError,
    DownloadTimeoutError,
    RangeNotSatisfiableError,
    StopRequestedError,
)
from ferry.agent.installer import Installed
from ferry.agent.storage import fsync_dir, fsync_file
from ferry.agent.transport import DeviceApi
from ferry.protocol.documents import BundleManifest, DeltaDescriptor, FileEntry
from ferry.protocol.errors import LengthExceededError, ProtocolError, VerificationError
from ferry.protocol.verify import FileVerifier, verify_file

log = logging.getLogger("ferry.agent.download")

Progress = Callable[[int], None]


DescriptorCheck = Callable[[bytes, str, str, int], DeltaDescriptor]
"""(raw descriptor, from sha256, to sha256, to size) → the verified descriptor, or raises."""


@dataclass
class DownloadOptions:
    """Knobs from the ``[install]`` config table."""

    chunk_bytes: int = 1 << 20
    reserve_bytes: int = 0
    use_deltas: bool = True
    pace: DownloadConfig = field(default_factory=DownloadConfig)


class RateGuard:
    """Ends a transfer that is too slow: an overall deadline and a minimum rate per window.

    A per-read timeout never fires against a server that trickles one byte a second
    (slow retrieval, TUF's "slow retrieval attack"), so every received piece is
    counted here against the clock. The deadline is ``deadline_grace_s`` plus the
    bytes still expected at ``min_rate_bytes_s``; the window check catches a stall
    long before that deadline on a large file.
    """

    def __init__(
        self,
        expected: int,
        pace: DownloadConfig,
        what: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pace, self.what, self.clock = pace, what, clock
        self.started = self.window_start = clock()
        self.deadline = self.started + pace.deadline_grace_s + expected / pace.min_rate_bytes_s
        self.window_bytes = 0

    def update(self, count: int) -> None:
        """Count ``count`` received bytes; raises ``DownloadTimeoutError`` when too slow."""
        now = self.clock()
        if now > self.deadline:
            raise DownloadTimeoutError(
                f"{self.what}: not complete after {now - self.started:.0f} s (deadline)"
            )
        self.window_bytes += count
        elapsed = now - self.window_start
        if elapsed >= self.pace.rate_window_s:
            if self.window_bytes < self.pace.min_rate_bytes_s * elapsed:
                raise DownloadTimeoutError(
                    f"{self.what}: {self.window_bytes} bytes in {elapsed:.0f} s, below "
                    f"{self.pace.min_rate_bytes_s} bytes/s"
                )
            self.window_start, self.window_bytes = now, 0


def part_path(final: Path) -> Path:
    return final.with_name(final.name + ".part")


class Downloader:
    """Brings every file of a manifest into a staging folder, resuming what is there."""

    def __init__(
        self,
        api: DeviceApi,
        options: DownloadOptions,
        stopping: Callable[[], bool] = lambda: False,
        descriptors: DescriptorCheck | None = None,
    ) -> None:
        self.api = api
        self.options = options
        self.stopping = stopping
        # Verifies a delta's signed descriptor; without one, deltas are never used.
        self.descriptors = descriptors

    def fetch(
        self,
        manifest: BundleManifest,
        staging: Path,
        old: Installed | None,
        progress: Progress,
        manifest_digest: str = "",
    ) -> None:
        """Download (or rebuild from a delta) each file not yet complete in ``staging``."""
        staging.mkdir(parents=True, exist_ok=True)
        self._check_space(manifest, staging)
        old_files = {e.path: e for e in old.manifest.files} if old else {}
        for entry in manifest.files:
            final = staging / entry.path
            if final.exists() and final.stat().st_size == entry.size:
                continue  # complete before a restart; VERIFYING hashes it again
            final.parent.mkdir(parents=True, exist_ok=True)
            base = old_files.get(entry.path)
            rebuilt = (
                old is not None
                and base is not None
                and self._delta_worthwhile(base, entry, final)
                and self._try_delta(
                    old.path / entry.path,
                    base,
                    entry,
                    final,
                    progress,
                    (old.digest, manifest_digest),
                )
            )
            if not rebuilt:
                self._download(entry, final, progress)
        _remove_strays(manifest, staging)

    def _check_space(self, manifest: BundleManifest, staging: Path) -> None:
        """Refuse before downloading rather than fill the disk halfway."""
        needed = 0
        for entry in manifest.files:
            final = staging / entry.path
            have = final.stat().st_size if final.exists() else 0
            part = part_path(final)
            have = max(have, part.stat().st_size if part.exists() else 0)
            needed += max(entry.size - have, 0)
        free = shutil.disk_usage(staging).free - self.options.reserve_bytes
        if needed > free:
            raise DiskFullError(f"bundle needs {needed} more bytes, {max(free, 0)} are free")

    def _delta_worthwhile(self, base: FileEntry, entry: FileEntry, final: Path) -> bool:
        return (
            self.options.use_deltas
            and self.descriptors is not None
            and base.sha256 != entry.sha256
            and not part_path(final).exists()  # a resumed full download keeps going
        )

    def _try_delta(
        self,
        old_file: Path,
        base: FileEntry,
        entry: FileEntry,
        final: Path,
        progress: Progress,
        manifests: tuple[str, str],
    ) -> bool:
        """Rebuild ``final`` from the old file and a delta; False means "download it whole".

        The checklist, in order: the delta's descriptor is signed by a bundles key and
        names this pair; the delta is streamed to disk, cut off past the signed size;
        its sha256 is the signed one — only then does a decoder see a byte of it — and
        the result is verified against the manifest as any download is.
        """
        from ferry.protocol.delta import apply_delta_file  # zstandard + bsdiff4: only when used

        assert self.descriptors is not None
        spool = final.with_name(final.name + ".delta-in")  # the decoder writes .delta-part
        try:
            raw = self.api.delta_descriptor(
                base.sha256,
                entry.sha256,
                from_manifest=manifests[0],
                to_manifest=manifests[1],
                path=entry.path,
            )
            signed = self.descriptors(raw, base.sha256, entry.sha256, entry.size)
            cap = min(signed.delta_size, entry.size)
            guard = RateGuard(cap, self.options.pace, f"delta for {entry.path}")
            with self.api.delta(base.sha256, entry.sha256, self.options.chunk_bytes) as chunks:
                _spool(
                    _capped(chunks, cap, progress, guard),
                    spool,
                    signed.delta_size,
                    signed.delta_sha256,
                )
            apply_delta_file(old_file, spool, final, entry.size, entry.sha256)
            crashpoint("delta.applied")
            verify_file(final, entry.size, entry.sha256)
        except (AgentError, ProtocolError, OSError) as exc:
            final.unlink(missing_ok=True)
            log.info("delta_fallback", extra={"fields": {"file": entry.path, "reason": str(exc)}})
            return False
        finally:
            spool.unlink(missing_ok=True)
        fsync_dir(final.parent)
        return True

    def _download(self, entry: FileEntry, final: Path, progress: Progress) -> None:
        """Stream one file with Range resume; verification errors delete the partial file."""
        part = part_path(final)
        if _promote_complete_part(entry, part, final):
            return
        try:
            try:
                self._stream_into(entry, part, progress)
            except RangeNotSatisfiableError as exc:
                # The server will not continue this partial file (416): start over from
                # byte 0, once. A second 416 (no Range was sent) is fatal, never a loop.
                log.warning(
                    "range_refused", extra={"fields": {"file": entry.path, "detail": str(exc)}}
                )
                part.unlink(missing_ok=True)
                self._stream_into(entry, part, progress)
        except VerificationError:
            part.unlink(missing_ok=True)
            raise
        crashpoint("download.complete")
        os.replace(part, final)
        fsync_dir(final.parent)

    def _stream_into(self, entry: FileEntry, part: Path, progress: Progress) -> None:
        have = part.stat().st_size if part.exists() else 0
        verifier = FileVerifier(entry.size, entry.sha256, what=entry.path)
        guard = RateGuard(max(entry.size - have, 0), self.options.pace, entry.path)
        blob = self.api.blob(
            entry.sha256, have if have <= entry.size else 0, self.options.chunk_bytes
        )
        with blob as (offset, chunks), open(part, "ab") as sink:
            sink.truncate(offset)  # the server may ignore Range: then start over
            _hash_prefix(part, verifier, offset, self.options.chunk_bytes)
            try:
                for chunk in chunks:
                    guard.update(len(chunk))
                    verifier.update(chunk)  # raises before a byte past the size is written
                    sink.write(chunk)
                    progress(len(chunk))
                    crashpoint("download.chunk")
                    if self.stopping():
                        raise StopRequestedError("stopping: the download resumes at the next start")
            finally:
                sink.flush()
                os.fsync(sink.fileno())  # what a resume will trust as its prefix is on disk
        verifier.finish()


def _remove_strays(manifest: BundleManifest, staging: Path) -> None:
    """Delete what a kill left beside the files (e.g. a ``.delta-part``): it must not be installed."""
    wanted = {staging / entry.path for entry in manifest.files}
    for path in staging.rglob("*"):
        if path.is_file() and path not in wanted:
            log.info("stray_removed", extra={"fields": {"file": str(path.relative_to(staging))}})
            path.unlink()


def _promote_complete_part(entry: FileEntry, part: Path, final: Path) -> bool:
    """Rename a ``.part`` file that already holds every byte (a kill before its rename).

    Asking the server for ``Range: bytes=<size>-`` would only earn a 416, so the
    file is hashed instead: it is promoted when it matches the manifest, and
    deleted (to be downloaded again from byte 0) when it does not.
    """
    if not part.exists() or part.stat().st_size != entry.size:
        return False
    try:
        verify_file(part, entry.size, entry.sha256)
    except VerificationError as exc:
        log.warning("part_discarded", extra={"fields": {"file": entry.path, "detail": str(exc)}})
        part.unlink()
        return False
    fsync_file(part)
    os.replace(part, final)
    fsync_dir(final.parent)
    return True


def _hash_prefix(part: Path, verifier: FileVerifier, size: int, chunk_bytes: int) -> None:
    """Feed the already-downloaded prefix of a resumed file to the verifier."""
    with open(part, "rb") as handle:
        remaining = size
        while remaining and (block := handle.read(min(chunk_bytes, remaining))):
            verifier.update(block)
            remaining -= len(block)


def _spool(chunks: Iterator[bytes], spool: Path, size: int, sha256: str) -> None:
    """Write the delta to ``spool`` and check it against its signed size and digest."""
    verifier = FileVerifier(size, sha256, spool.name)
    with spool.open("wb") as handle:
        for chunk in chunks:
            verifier.update(chunk)
            handle.write(chunk)
    verifier.finish()


def _capped(
    chunks: Iterator[bytes], cap: int, progress: Progress, guard: RateGuard
) -> Iterator[bytes]:
    """A delta larger than the file it rebuilds, or too slow, is refused while it streams."""
    received = 0
    for chunk in chunks:
        guard.update(len(chunk))
        received += len(chunk)
        if received > cap:
            raise LengthExceededError(f"delta is larger than the {cap}-byte file it rebuilds")
        progress(len(chunk))
        yield chunk
