"""Deltas on demand: built in a process pool, cached content-addressed, offered when they pay.

The cache lives in the blob store itself (local folder or S3, safe to share
between server replicas: two replicas building the same pair write the same bytes):

    the delta                                   a blob, addressed by its own sha256
    record deltas/<from_sha256>/<to_sha256>.json   what was built for the pair (also
                                                   "not worth it")

``work_dir`` is local scratch: the pool writes the delta there, and a store that
is not local copies the two inputs there for the length of a build.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio

from ferry.protocol.delta import DeltaDescriptor
from ferry.protocol.delta.encode import EncodeOptions, build_delta
from ferry.protocol.delta.encode._lifetime import exit_with_parent, lifetime_args
from ferry.server.core.blobs import BlobStore

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
    """A delta worth sending: what the descriptor must say (the bytes are the store's blob)."""

    record: PairRecord

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
        store: BlobStore,
        work_dir: str | os.PathLike[str],
        *,
        max_fraction: float = DEFAULT_MAX_FRACTION,
        options: EncodeOptions | None = None,
        max_concurrent_builds: int = 1,
    ) -> None:
        self.store = store
        self.work_dir = Path(work_dir)
        self.max_fraction = max_fraction
        self.options = options or EncodeOptions()
        self._max_builds = max_concurrent_builds
        self._pool: ProcessPoolExecutor | None = None
        self._inflight: dict[tuple[str, str], asyncio.Future[PairRecord]] = {}

    # --- lookups (blocking: a small record read and a size check) ---

    def cached(self, from_sha256: str, to_sha256: str) -> PairRecord | None:
        """What an earlier build found for this pair, if any."""
        data = self.store.get_record(pair_record_name(from_sha256, to_sha256))
        if data is None:
            return None
        record = PairRecord(**json.loads(data))
        return record if self.store.exists(record.delta_sha256) else None

    def offer(self, record: PairRecord) -> DeltaOffer | None:
        """The delta, if it is smaller than ``max_fraction`` of the full artifact."""
        if record.fraction() >= self.max_fraction:
            return None
        return DeltaOffer(record)

    # --- building ---

    def build(
        self,
        from_sha256: str,
        to_sha256: str,
        old_path: Path | None = None,
        new_path: Path | None = None,
    ) -> DeltaOffer | None:
        """Build (or reuse) the delta in this process; blocking, for scripts and workers.

        Without paths the two artifacts come from the store."""
        record = self.cached(from_sha256, to_sha256)
        if record is None:
            with ExitStack() as stack:
                old, new = self._inputs(stack, from_sha256, to_sha256, old_path, new_path)
                built, tmp = build_pair(
                    str(self.work_dir), from_sha256, to_sha256, str(old), str(new), self.options
                )
            record = self._publish(built, Path(tmp))
        return self.offer(record)

    async def get(
        self,
        from_sha256: str,
        to_sha256: str,
        old_path: Path | None = None,
        new_path: Path | None = None,
    ) -> DeltaOffer | None:
        """The delta for a pair, built in the process pool at most once at a time per pair.

        Never blocks the event loop: store reads run in threads, the build in a
        ``ProcessPoolExecutor``; concurrent requests for the same pair await one build.
        """
        record = await anyio.to_thread.run_sync(self.cached, from_sha256, to_sha256)
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
        self, from_sha256: str, to_sha256: str, old_path: Path | None, new_path: Path | None
    ) -> PairRecord:
        loop = asyncio.get_running_loop()
        with ExitStack() as stack:
            old, new = await anyio.to_thread.run_sync(
                self._inputs, stack, from_sha256, to_sha256, old_path, new_path
            )
            built, tmp = await loop.run_in_executor(
                self._executor(), build_pair,
                str(self.work_dir), from_sha256, to_sha256, str(old), str(new), self.options,
            )  # fmt: skip
            # closing the stack (below) removes downloaded inputs: a cheap unlink
        return await anyio.to_thread.run_sync(self._publish, built, Path(tmp))

    def _inputs(
        self,
        stack: ExitStack,
        from_sha256: str,
        to_sha256: str,
        old_path: Path | None,
        new_path: Path | None,
    ) -> tuple[Path, Path]:
        """Local files of both artifacts (downloaded into ``work_dir`` when the store is remote)."""
        inputs = self.work_dir / "inputs"
        old = old_path or stack.enter_context(self.store.local_copy(from_sha256, inputs))
        new = new_path or stack.enter_context(self.store.local_copy(to_sha256, inputs))
        return old, new

    def _publish(self, record: PairRecord, tmp: Path) -> PairRecord:
        """Put the built delta into the store, then its pair record (readers need both)."""
        try:
            self.store.put_file(record.delta_sha256, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        data = json.dumps(asdict(record), sort_keys=True).encode()
        self.store.put_record(pair_record_name(record.from_sha256, record.to_sha256), data)
        return record

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


def pair_record_name(from_sha256: str, to_sha256: str) -> str:
    return f"deltas/{from_sha256}/{to_sha256}.json"


def build_pair(
    work_dir: str,
    from_sha256: str,
    to_sha256: str,
    old_path: str,
    new_path: str,
    options: EncodeOptions,
) -> tuple[PairRecord, str]:
    """Build one delta into a temp file (runs in a pool worker); refuses mislabelled inputs.

    Returns the pair's record and the temp file, which the caller stores and removes."""
    tmp_dir = Path(work_dir) / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{uuid.uuid4().hex}.delta"
    try:
        result = build_delta(old_path, new_path, tmp, options)
        if result.base_sha256 != from_sha256 or result.target_sha256 != to_sha256:
            raise ValueError("the artifacts given do not hash to the requested from/to sha256")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    record = PairRecord(from_sha256, to_sha256, result.sha256, result.size, result.target_size)
    return record, str(tmp)
