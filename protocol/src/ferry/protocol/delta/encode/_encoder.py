"""Build Ferry deltas and compressed full artifacts (the server side of issue 8).

Each chunk is coded every way that can plausibly win and the smallest result is
kept: a copy of an identical old chunk, a float-aware lane delta against the
aligned old values (byte planes + zstd), a zstd frame with the old counterpart
as prefix, a bsdiff4 patch (only where bytes may have shifted: it is slow and
useless on aligned tensors whose every value moved), or the chunk compressed on
its own. Chunks are independent, so they are coded in parallel processes and
written in order; files are read with ``os.pread``, never loaded whole.
"""

from __future__ import annotations

import bz2
import hashlib
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import bsdiff4
import zstandard

from ferry.protocol.delta import (
    ChunkRecord,
    Codec,
    DeltaError,
    DeltaHeader,
    Op,
    decode_chunk,
    payload_cap,
)
from ferry.protocol.delta.codec import (
    bsdiff_sizes,
    control_cap,
    lane_delta,
    sparse_encode,
    split_planes,
)
from ferry.protocol.delta.encode._layout import read_layout, sidecar
from ferry.protocol.delta.encode._lifetime import exit_with_parent, lifetime_args
from ferry.protocol.delta.encode._match import Matcher
from ferry.protocol.delta.encode._plan import ChunkPlan, old_pieces, plan_chunks

_READ = 1 << 20
SPARSE_RATIO = 8  # lane deltas compressed below 1/8 of the chunk are tried with sparse codings
SPARSE_LEVEL = 19  # zstd level of the sparse symbol streams: small (≤ 1/8 chunk), so cheap
# bzip2 decodes ~10x slower than zstd (~100 MB/s of output): it must save one byte of
# delta per this many bytes of output it decodes (2 KiB per MiB chunk). MiniLM full
# fine-tune: 46 bzip2 chunks saved 0.15 % of the delta and cost 60 % of the apply's CPU
# (85 -> 203 MB of output per CPU second without them).
BZ2_OUTPUT_PER_BYTE_SAVED = 512
_BATCH = 4  # chunks per task: amortises process round trips, keeps results in order


@dataclass(frozen=True)
class EncodeOptions:
    """Encoder knobs; the defaults are the ones measured in docs/benchmarks.md."""

    chunk_size: int = 1 << 20
    level: int = 3  # zstd level for trying every candidate
    final_level: int = 12  # the winner is recompressed at this level (~0.5-3% smaller)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    bsdiff_max_source: int = 4 << 20  # bsdiff's suffix sort is slow: skip larger counterparts
    verify: bool = True  # decode every chosen payload with the device's decoder before writing


@dataclass(frozen=True)
class DeltaResult:
    """What was written: the delta's own identity and what each codec contributed."""

    path: Path
    size: int
    sha256: str
    target_size: int
    target_sha256: str
    base_sha256: str | None
    chunks: dict[str, int]  # codec name → chunk count
    payload_bytes: dict[str, int]  # codec name → payload bytes


def build_delta(
    old_path: str | os.PathLike[str],
    new_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: EncodeOptions | None = None,
) -> DeltaResult:
    """Write a delta that rebuilds ``new_path`` from ``old_path``."""
    return _build(Path(old_path), Path(new_path), Path(out_path), options or EncodeOptions())


def build_compressed(
    new_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: EncodeOptions | None = None,
) -> DeltaResult:
    """Write a "compressed full artifact": the same container with no base.

    Tensor chunks are byte-plane coded, which is what makes float weights
    compress at all; the signed manifest still describes the uncompressed bytes.
    """
    return _build(None, Path(new_path), Path(out_path), options or EncodeOptions())


def build_bsdiff40(
    old_path: str | os.PathLike[str],
    new_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
) -> DeltaResult:
    """A plain whole-file BSDIFF40 patch, as the standard C ``bspatch`` applies it.

    For devices that run ``firmware_examples/bspatch-apply.sh`` instead of the
    agent. Needs whole files in memory and is slow: small artifacts only.
    """
    out = Path(out_path)
    tmp = out.with_name(out.name + ".tmp")
    try:
        bsdiff4.file_diff(str(old_path), str(new_path), str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return DeltaResult(
        path=out,
        size=out.stat().st_size,
        sha256=_file_sha256(out),
        target_size=Path(new_path).stat().st_size,
        target_sha256=_file_sha256(Path(new_path)),
        base_sha256=_file_sha256(Path(old_path)),
        chunks={"bsdiff40": 1},
        payload_bytes={"bsdiff40": out.stat().st_size},
    )


# --- the build ----------------------------------------------------------------------------


def _build(old: Path | None, new: Path, out: Path, options: EncodeOptions) -> DeltaResult:
    new_size = new.stat().st_size
    with open(new, "rb") as new_file:
        new_layout = read_layout(new_file.fileno(), new_size, sidecar(new))
    if old is None:
        plans = plan_chunks(new_layout, new_size, None, None, options.chunk_size)
        index: dict[tuple[int, bytes], int] = {}
        base_size, base_sha256 = 0, None
    else:
        base_size = old.stat().st_size
        with open(old, "rb") as old_file, open(new, "rb") as new_file:
            old_layout = read_layout(old_file.fileno(), base_size, sidecar(old))
            index, base_sha256 = _index_old(
                old_file.fileno(), old_pieces(old_layout, base_size, options.chunk_size)
            )
            matcher = Matcher(old_file.fileno(), base_size, new_file.fileno())
            plans = plan_chunks(
                new_layout, new_size, old_layout, base_size, options.chunk_size, matcher
            )
    header = DeltaHeader(
        chunk_size=max((p.length for p in plans), default=1),
        chunks=len(plans),
        base_size=base_size,
        base_sha256=base_sha256,
        target_size=new_size,
        target_sha256=_file_sha256(new),
    )
    return _write(out, header, _encode_all(old, new, plans, index, options))


def _write(
    out: Path, header: DeltaHeader, chunks: Iterable[tuple[ChunkRecord, bytes]]
) -> DeltaResult:
    tmp = out.with_name(out.name + ".tmp")
    digest = hashlib.sha256()
    counts: dict[str, int] = {}
    payload_bytes: dict[str, int] = {}
    size = 0
    try:
        with open(tmp, "wb") as sink:
            for piece in _pieces(header, chunks, counts, payload_bytes):
                sink.write(piece)
                digest.update(piece)
                size += len(piece)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return DeltaResult(
        out, size, digest.hexdigest(), header.target_size, header.target_sha256,
        header.base_sha256, counts, payload_bytes,
    )  # fmt: skip


def _pieces(
    header: DeltaHeader,
    chunks: Iterable[tuple[ChunkRecord, bytes]],
    counts: dict[str, int],
    payload_bytes: dict[str, int],
) -> Iterator[bytes]:
    yield header.to_bytes()
    for record, payload in chunks:
        name = record.codec.name.lower()
        counts[name] = counts.get(name, 0) + 1
        payload_bytes[name] = payload_bytes.get(name, 0) + len(payload)
        yield record.to_bytes()
        yield payload


def _index_old(fd: int, pieces: list[tuple[int, int]]) -> tuple[dict[tuple[int, bytes], int], str]:
    """Hash every old chunk (for copies) and, in the same pass, the whole old file."""
    whole = hashlib.sha256()
    index: dict[tuple[int, bytes], int] = {}
    for offset, length in pieces:
        data = os.pread(fd, length, offset)
        whole.update(data)
        index.setdefault((length, hashlib.sha256(data).digest()), offset)
    return index, whole.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_READ):
            digest.update(block)
    return digest.hexdigest()


# --- parallel chunk coding ---------------------------------------------------------------------


def _encode_all(
    old: Path | None,
    new: Path,
    plans: list[ChunkPlan],
    index: dict[tuple[int, bytes], int],
    options: EncodeOptions,
) -> Iterator[tuple[ChunkRecord, bytes]]:
    batches = [plans[i : i + _BATCH] for i in range(0, len(plans), _BATCH)]
    if options.workers <= 1 or len(batches) <= 1:
        _init_worker(old, new, index, options)
        try:
            for batch in batches:
                yield from _encode_batch(batch)
        finally:
            _close_worker()
        return
    context = multiprocessing.get_context("spawn")  # never fork a threaded server process
    with ProcessPoolExecutor(
        max_workers=options.workers,
        mp_context=context,
        initializer=_init_chunk_worker,
        initargs=(lifetime_args(), old, new, index, options),  # die with the build's process
    ) as pool:
        for result in pool.map(_encode_batch, batches):
            yield from result


class _Worker:
    """Per-process state: open files, the old-chunk index and reusable zstd contexts."""

    old_fd: ClassVar[int | None] = None
    new_fd: ClassVar[int] = -1
    index: ClassVar[dict[tuple[int, bytes], int]] = {}
    options: ClassVar[EncodeOptions] = EncodeOptions(workers=1)
    zstd: ClassVar[zstandard.ZstdCompressor | None] = None


def _init_chunk_worker(
    lifetime: tuple[int, bool],
    old: Path | None,
    new: Path,
    index: dict[tuple[int, bytes], int],
    options: EncodeOptions,
) -> None:
    """Initializer of a chunk worker: bound to its parent's life, then set up like any worker."""
    exit_with_parent(*lifetime)
    _init_worker(old, new, index, options)


def _init_worker(
    old: Path | None, new: Path, index: dict[tuple[int, bytes], int], options: EncodeOptions
) -> None:
    _Worker.old_fd = os.open(old, os.O_RDONLY) if old is not None else None
    _Worker.new_fd = os.open(new, os.O_RDONLY)
    _Worker.index = index
    _Worker.options = options
    _Worker.zstd = zstandard.ZstdCompressor(level=options.level)


def _close_worker() -> None:
    for fd in (_Worker.old_fd, _Worker.new_fd):
        if fd is not None and fd >= 0:
            os.close(fd)
    _Worker.old_fd, _Worker.new_fd = None, -1


def _encode_batch(batch: list[ChunkPlan]) -> list[tuple[ChunkRecord, bytes]]:
    return [encode_chunk(plan) for plan in batch]


@dataclass(frozen=True)
class _Candidate:
    payload: bytes
    codec: Codec
    op: Op = Op.NONE
    width: int = 1
    src_offset: int = 0
    src_len: int = 0
    plain: bytes = b""  # what zstd compressed, kept to recompress the winner
    prefix: zstandard.ZstdCompressionDict | None = None


def _zstd_candidate(
    plain: bytes, codec: Codec, op: Op = Op.NONE, width: int = 1, src: tuple[int, int] = (0, 0)
) -> _Candidate:
    assert _Worker.zstd is not None
    return _Candidate(_Worker.zstd.compress(plain), codec, op, width, src[0], src[1], plain)


def _polish(best: _Candidate) -> _Candidate:
    """Recompress the winning zstd payload at the final level; keep it if smaller."""
    level = _Worker.options.final_level
    if not best.plain or level <= _Worker.options.level:
        return best
    if best.prefix is not None:
        payload = zstandard.ZstdCompressor(level=level, dict_data=best.prefix).compress(best.plain)
    else:
        payload = zstandard.ZstdCompressor(level=level).compress(best.plain)
    return replace(best, payload=payload) if len(payload) < len(best.payload) else best


def encode_chunk(plan: ChunkPlan) -> tuple[ChunkRecord, bytes]:
    """Code one chunk every plausible way and keep the smallest."""
    data = os.pread(_Worker.new_fd, plan.length, plan.offset)
    if len(data) != plan.length:
        raise RuntimeError("the new artifact changed while a delta was being built")
    digest = hashlib.sha256(data).digest()
    old = _aligned(plan)
    best = _copy(plan, data, digest, old) or _smallest(plan, data, old)
    record = ChunkRecord(
        plan.offset, plan.length, best.codec, best.op, best.width,
        best.src_offset, best.src_len, len(best.payload), digest,
    )  # fmt: skip
    if _Worker.options.verify:
        _self_check(record, best, data)
    return record, best.payload


def _aligned(plan: ChunkPlan) -> bytes | None:
    if plan.aligned is None or _Worker.old_fd is None:
        return None
    return os.pread(_Worker.old_fd, plan.length, plan.aligned)


def _copy(plan: ChunkPlan, data: bytes, digest: bytes, old: bytes | None) -> _Candidate | None:
    if old == data:
        return _Candidate(b"", Codec.COPY, src_offset=plan.aligned or 0, src_len=plan.length)
    at = _Worker.index.get((plan.length, digest))
    if at is not None:
        return _Candidate(b"", Codec.COPY, src_offset=at, src_len=plan.length)
    return None


def _smallest(plan: ChunkPlan, data: bytes, old: bytes | None) -> _Candidate:
    candidates = [_zstd_candidate(data, Codec.ZSTD)]
    if plan.tensor and plan.width > 1:
        for op in plan.baseless_ops:
            residual = split_planes(lane_delta(data, None, op, plan.width), plan.width)
            candidates.append(_zstd_candidate(residual, Codec.ZSTD, op, plan.width))
    if old is not None:
        lanes = [(op, plan.width) for op in plan.ops]
        if not plan.tensor:  # unknown bytes: a byte-wise difference, as bsdiff's diff block
            lanes.append((Op.SUB, 1))
        for op, width in lanes:
            residual = split_planes(lane_delta(data, old, op, width), width)
            candidates.append(
                _zstd_candidate(residual, Codec.FLOAT, op, width, (plan.aligned or 0, plan.length))
            )
    best = _sparse(_polish(min(candidates, key=lambda c: len(c.payload))), candidates)
    if plan.cp_length and _Worker.old_fd is not None and _worth_a_reference(plan, best):
        best = _with_reference(plan, data, best)
    return best


def _sparse(best: _Candidate, candidates: list[_Candidate]) -> _Candidate:
    """Mostly-zero residuals (e.g. re-quantised int8) have better codings than zstd.

    bzip2 (BWT) of the residual, when it saves enough for its slow decoding
    (``BZ2_OUTPUT_PER_BYTE_SAVED``), and (skip, value) symbols in two zstd frames
    (codec SPARSE, which needs at most one nonzero byte in 8). Tried only when the
    best lane delta is already small (cheap then), on every lane operation: the
    one zstd liked best is not always the one these do.
    """
    if best.codec is not Codec.FLOAT or len(best.payload) * SPARSE_RATIO > len(best.plain):
        return best
    for candidate in candidates:
        if candidate.codec is not Codec.FLOAT:
            continue
        packed = bz2.compress(candidate.plain, 9)
        if len(best.payload) - len(packed) > len(candidate.plain) // BZ2_OUTPUT_PER_BYTE_SAVED:
            best = replace(candidate, payload=packed, codec=Codec.FLOAT_BZ2)
        symbols = sparse_encode(candidate.plain, SPARSE_LEVEL)
        if symbols is not None and len(symbols) < len(best.payload):
            best = replace(candidate, payload=symbols, codec=Codec.SPARSE)
    return best


def _worth_a_reference(plan: ChunkPlan, best: _Candidate) -> bool:
    """Byte-matching coders only pay where bytes may have shifted, not on aligned drift."""
    return plan.aligned is None or not plan.tensor or len(best.payload) > plan.length // 2


def _with_reference(plan: ChunkPlan, data: bytes, best: _Candidate) -> _Candidate:
    """zstd with the old counterpart as prefix, and bsdiff; the smallest of them and ``best``.

    bsdiff costs ~0.5 s per MiB and loses to lane deltas on aligned tensors, so on
    tensor chunks it is tried only when the cheap prefix coder has already beaten
    every other codec. On bytes with no tensor layout (an unknown container, the
    bytes between tensors) it is always tried: nothing else finds shifted runs
    with a few changed bytes, and those must never lose to whole-file bsdiff.
    """
    assert _Worker.old_fd is not None
    source = os.pread(_Worker.old_fd, plan.cp_length, plan.cp_offset)
    prefix = zstandard.ZstdCompressionDict(source, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    ref = zstandard.ZstdCompressor(level=_Worker.options.level, dict_data=prefix).compress(data)
    ref_won = len(ref) < len(best.payload)
    if ref_won:
        best = _polish(
            _Candidate(
                ref, Codec.ZSTD_REF, Op.NONE, 1, plan.cp_offset, plan.cp_length, data, prefix
            )
        )
    if (ref_won or not plan.tensor) and plan.cp_length <= _Worker.options.bsdiff_max_source:
        patch = bsdiff4.diff(source, data)
        if len(patch) < len(best.payload) and _bsdiff_acceptable(patch, plan.length):
            best = _Candidate(
                patch, Codec.BSDIFF, src_offset=plan.cp_offset, src_len=plan.cp_length
            )
    return best


def _bsdiff_acceptable(patch: bytes, out_size: int) -> bool:
    """Only emit patches the device's caps accept (payload and control block size)."""
    if len(patch) > payload_cap(out_size):
        return False
    control, _, _ = bsdiff_sizes(patch)
    return len(bz2.decompress(patch[32 : 32 + control])) <= control_cap(out_size)


def _self_check(record: ChunkRecord, best: _Candidate, data: bytes) -> None:
    """Decode with the device's own code: the encoder never emits what a device refuses."""
    source = None
    if record.codec is not Codec.ZSTD:  # every other codec reads the old file
        assert _Worker.old_fd is not None
        source = os.pread(_Worker.old_fd, record.src_len, record.src_offset)
    try:
        decoded = decode_chunk(record, best.payload, source)
    except DeltaError as exc:
        raise RuntimeError(
            f"encoder produced an undecodable {record.codec.name} chunk: {exc}"
        ) from exc
    if decoded != data:
        raise RuntimeError(
            f"encoder produced a wrong {record.codec.name} chunk at {record.out_offset}"
        )
