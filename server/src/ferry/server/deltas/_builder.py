"""Deltas on demand: built in a process pool, cached content-addressed, offered when they pay.

Layout of ``cache_dir`` (safe to share between server replicas: every write is a
temp file renamed into place, and two replicas building the same pair write the
same bytes):

    blobs/<sha[:2]>/<sha256 of the delta>       the delta itself
    pairs/<from_sha256>/<to_sha256>.json        what was built for the pair (also "not worth it")
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ferry.protocol.delta import DeltaDescriptor
from ferry.protocol.delta.encode import EncodeOptions, build_delta
from ferry.protocol.delta.encode._lifetime import exit_with_parent, lifetime_args

DEFAULT_MAX_FRACTION = 0.6
FORMAT = "ferry-delta/1"


@dataclass(frozen=True)
class PairRecord:
    """The cached outcome of building one (from, to) delta."""

    from_sha256: str
    to_sha256: str
    delta_sha256: str
    delta_size: int
    target_size: int
    format: str = FORMAT

    def fraction(self) -> float:
        return self.delta_size / self.target_size if self.target_size else 1.0


@dataclass(frozen=True)
class DeltaOffer:
    """A delta worth sending: where it is and what the descriptor must say."""

    record: PairRecord
    path: Path

    def descriptor(self, from_manifest: str, to_manifest: str, file_path: str) -> DeltaDescriptor:
        """The unsigned descriptor; sign ``.to_dict()`` with a bundles key."""
        r = self.record
        return DeltaDescriptor(
            from_manifest=from_manifest, to_manifest=to_manifest, path=file_path,
            from_sha256=r.from_sha256, to_sha256=r.to_sha256, to_size=r.target_size,
            delta_sha256=r.delta_sha256, delta_size=r.delta_size, format=r.format,
        )  # fmt: skip


class DeltaBuilder:
    """Builds, caches and offers deltas between artifacts named by their sha256."""

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        *,
        max_fraction: float = DEFAULT_MAX_FRACTION,
        options: EncodeOptions | None = None,
        max_concurrent_builds: int = 1,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.max_fraction = max_fraction
        self.options = options or EncodeOptions()
        self._max_builds = max_concurrent_builds
        self._pool: ProcessPoolExecutor | None = None
        self._inflight: dict[tuple[str, str], asyncio.Future[PairRecord]] = {}

    # --- lookups (cheap, synchronous: a stat and a small JSON read) ---

    def cached(self, from_sha256: str, to_sha256: str) -> PairRecord | None:
        """What an earlier build found for this pair, if any."""
        path = self._pair_path(from_sha256, to_sha256)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        record = PairRecord(**data)
        return record if self.blob_path(record.delta_sha256).exists() else None

    def offer(self, record: PairRecord) -> DeltaOffer | None:
        """The delta, if it is smaller than ``max_fraction`` of the full artifact."""
        if record.fraction() >= self.max_fraction:
            return None
        return DeltaOffer(record, self.blob_path(record.delta_sha256))

    def blob_path(self, delta_sha256: str) -> Path:
        return self.cache_dir / "blobs" / delta_sha256[:2] / delta_sha256

    # --- building ---

    def build(
        self, from_sha256: str, to_sha256: str, old_path: Path, new_path: Path
    ) -> DeltaOffer | None:
        """Build (or reuse) the delta in this process; blocking, for scripts and workers."""
        record = self.cached(from_sha256, to_sha256) or build_pair(
            str(self.cache_dir), from_sha256, to_sha256, str(old_path), str(new_path), self.options
        )
        return self.offer(record)

    async def get(
        self, from_sha256: str, to_sha256: str, old_path: Path, new_path: Path
    ) -> DeltaOffer | None:
        """The delta for a pair, built in the process pool at most once at a time per pair.

        Never blocks the event loop: the build runs in a ``ProcessPoolExecutor`` via
        ``loop.run_in_executor``; concurrent requests for the same pair await one build.
        """
        record = self.cached(from_sha256, to_sha256)
        if record is None:
            key = (from_sha256, to_sha256)
            future = self._inflight.get(key)
            if future is None:
                future = asyncio.ensure_future(
                    self._build_in_pool(from_sha256, to_sha256, old_path, new_path)
                )
                self._inflight[key] = future
                future.add_done_callback(lambda _: self._inflight.pop(key, None))
            record = await asyncio.shield(future)
        return self.offer(record)

    async def _build_in_pool(
        self, from_sha256: str, to_sha256: str, old_path: Path, new_path: Path
    ) -> PairRecord:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor(), build_pair,
            str(self.cache_dir), from_sha256, to_sha256, str(old_path), str(new_path), self.options,
        )  # fmt: skip

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # never fork a threaded server
            self._pool = ProcessPoolExecutor(
                max_workers=self._max_builds, mp_context=context,
                initializer=exit_with_parent, initargs=lifetime_args(),  # die with the server
            )  # fmt: skip
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (running builds finish first)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _pair_path(self, from_sha256: str, to_sha256: str) -> Path:
        return self.cache_dir / "pairs" / from_sha256 / f"{to_sha256}.json"


def build_pair(
    cache_dir: str,
    from_sha256: str,
    to_sha256: str,
    old_path: str,
    new_path: str,
    options: EncodeOptions,
) -> PairRecord:
    """Build one delta into the cache (runs in a pool worker); refuses mislabelled inputs."""
    root = Path(cache_dir)
    tmp_dir = root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{uuid.uuid4().hex}.delta"
    try:
        result = build_delta(old_path, new_path, tmp, options)
        if result.base_sha256 != from_sha256 or result.target_sha256 != to_sha256:
            raise ValueError("the artifacts given do not hash to the requested from/to sha256")
        blob = root / "blobs" / result.sha256[:2] / result.sha256
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, blob)
    finally:
        tmp.unlink(missing_ok=True)
    record = PairRecord(from_sha256, to_sha256, result.sha256, result.size, result.target_size)
    _write_json(root / "pairs" / from_sha256 / f"{to_sha256}.json", asdict(record))
    return record


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)
