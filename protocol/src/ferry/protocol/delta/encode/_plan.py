"""Cut the new artifact into chunks and pair each with its best old counterpart.

Tensors are cut individually from their own start, so a tensor that moved in the
file still lines up with itself in the old one (same name, same byte length,
same element width → *aligned*: lane-wise XOR/difference is possible). A tensor
whose shape changed is aligned over the block of elements both versions have
(rows, columns, the leading block in general) and the rest is coded as new; one
with no usable common block keeps a proportional window of its old bytes as a
*counterpart* for bsdiff or a zstd prefix. Bytes outside tensors (headers,
padding) and files with no readable layout pair with the same offsets.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from ferry.protocol.delta import Op
from ferry.protocol.delta.encode._match import Matcher
from ferry.protocol.delta.encode._tensor import Tensor

RAW_WIDTH = 4  # unknown bytes are most often float32 weights
RAW_OPS = (Op.XOR,)
SMALL_TENSOR = 64 << 10  # tensors below this are grouped with their small neighbours
MATCHED_REGION = 64 << 10  # raw regions from this size on are located in the old file
SMALL_WINDOW = 64 << 10  # old bytes either side of a short unlocated chunk (a zip entry header)
MIN_PIECE = 64  # the shortest chunk a placement boundary may cut ...
SHORT_PIECES = 16  # ... while short pieces stay below this many plus one per chunk_size
MIN_RUN = 4 << 10  # shortest common run of a reshaped tensor worth a chunk of its own
MAX_RUNS = 1 << 16  # most common runs per reshaped tensor (chunks, records, encoder time)


@dataclass(frozen=True)
class ChunkPlan:
    """One chunk of the new file and what in the old file it may be coded against."""

    offset: int
    length: int
    width: int
    ops: tuple[Op, ...]
    tensor: bool  # element-typed bytes: byte planes are worth trying even without a base
    baseless_ops: tuple[Op, ...]
    aligned: int | None  # old offset of a same-length, same-dtype range
    cp_offset: int = 0  # counterpart window for bsdiff / zstd prefix (cp_length 0: none)
    cp_length: int = 0


def plan_chunks(
    new_layout: list[Tensor] | None,
    new_size: int,
    old_layout: list[Tensor] | None,
    old_size: int | None,
    chunk_size: int,
    matcher: Matcher | None = None,
) -> list[ChunkPlan]:
    """Every byte of the new file in exactly one chunk, in file order.

    ``matcher`` locates raw regions (bytes outside tensors, whole unknown files)
    in the old file; without one they pair with the same old offsets.
    """
    if chunk_size % 8:
        raise ValueError("chunk_size must be a multiple of 8 so lanes never straddle chunks")
    if new_layout is None:
        return list(_raw(0, new_size, old_size, chunk_size, matcher))
    old_by_name = {t.name: t for t in old_layout or ()}
    plans: list[ChunkPlan] = []
    position = 0
    for tensor in _group_small(new_layout, old_by_name, chunk_size):
        plans += _raw(position, tensor.offset, old_size, chunk_size, matcher)
        plans += _tensor(tensor, old_by_name.get(tensor.name), chunk_size)
        position = tensor.offset + tensor.length
    plans += _raw(position, new_size, old_size, chunk_size, matcher)
    return plans


def _group_small(
    new_layout: list[Tensor], old_by_name: dict[str, Tensor], chunk_size: int
) -> list[Tensor]:
    """Merge runs of small adjacent tensors (biases, norms, scales) into one chunk each.

    A chunk per 1 kB bias wastes its record and zstd frame and compresses cold;
    a run qualifies when its tensors are adjacent in both files, in the same order
    (so the old bytes are one aligned range too), or are all new. Merged runs are
    added to ``old_by_name`` under a name no real tensor has.
    """
    out: list[Tensor] = []
    run: list[Tensor] = []
    for tensor in new_layout:
        if run and not _joins(run, tensor, old_by_name, chunk_size):
            out.append(_merged(run, old_by_name))
            run = []
        if tensor.length < SMALL_TENSOR:
            run.append(tensor)
        else:
            out.append(tensor)
    if run:
        out.append(_merged(run, old_by_name))
    return out


def _aligned_old(tensor: Tensor, old_by_name: dict[str, Tensor]) -> Tensor | None:
    old = old_by_name.get(tensor.name)
    return old if old and old.length == tensor.length and old.width == tensor.width else None


def _joins(
    run: list[Tensor], tensor: Tensor, old_by_name: dict[str, Tensor], chunk_size: int
) -> bool:
    last = run[-1]
    if tensor.length >= SMALL_TENSOR or tensor.offset != last.offset + last.length:
        return False
    if (tensor.width, tensor.is_float) != (last.width, last.is_float):
        return False
    if sum(t.length for t in run) + tensor.length > chunk_size:
        return False
    old, last_old = _aligned_old(tensor, old_by_name), _aligned_old(last, old_by_name)
    if old is None or last_old is None:
        return tensor.name not in old_by_name and last.name not in old_by_name
    return old.offset == last_old.offset + last_old.length


def _merged(run: list[Tensor], old_by_name: dict[str, Tensor]) -> Tensor:
    if len(run) == 1:
        return run[0]
    name = "\x00".join(t.name for t in run)
    first, length = run[0], sum(t.length for t in run)
    old = _aligned_old(first, old_by_name)
    if old is not None:
        old_by_name[name] = Tensor(name, old.width, old.is_float, old.offset, length)
    return Tensor(name, first.width, first.is_float, first.offset, length)


def _raw(
    start: int, end: int, old_size: int | None, chunk_size: int, matcher: Matcher | None
) -> Iterator[ChunkPlan]:
    """Chunks of bytes with no tensor layout, each paired with old bytes at its shift.

    Without a matcher (or in small regions such as headers) the shift is zero and
    the counterpart window four times the chunk (at least 64 KiB, at most one chunk)
    either side; a located chunk gets a quarter chunk either side (enough for local
    insertions; bsdiff's time grows with the window).
    """
    located = matcher is not None and old_size is not None and end - start >= MATCHED_REGION
    offset, short = start, 0
    while offset < end:
        length = min(chunk_size, end - offset)
        at, margin = offset, min(chunk_size, max(4 * length, SMALL_WINDOW))
        if located:
            assert matcher is not None
            shift, usable = matcher.locate(offset, length)
            at, margin = offset + shift, chunk_size // 4
            if usable < length:  # the placement ends (or another starts) here: cut
                budget = SHORT_PIECES + (offset - start) // chunk_size
                shortest = MIN_PIECE if short < budget else chunk_size // 16
                length = min(max(usable, shortest), length)
                short += length < chunk_size // 16
        aligned = at if old_size is not None and at + length <= old_size else None
        cp_offset, cp_length = _window(at - margin, at + length + margin, 0, old_size or 0)
        yield ChunkPlan(
            offset, length, RAW_WIDTH, RAW_OPS, False, (Op.NONE,), aligned, cp_offset, cp_length
        )
        offset += length


def _tensor(new: Tensor, old: Tensor | None, chunk_size: int) -> Iterator[ChunkPlan]:
    """Chunks of one tensor: aligned with its old version over their common block.

    When a shape changed (vocabulary extension, a grown classifier head, pruned rows
    or columns), the elements both versions have — the leading block
    ``[min(d0), min(d1), …]`` — are runs of bytes at known offsets in both files
    (:func:`common_runs`): each run is cut into aligned chunks (lane deltas against
    the same elements of the old tensor), and the bytes between runs (added rows or
    columns) are coded as new. A tensor with no common block gets a proportional
    window of its old bytes as counterpart.
    """
    runs = common_runs(new, old)
    if old is not None and not runs:
        yield from _unaligned(new, old, chunk_size)
        return
    rel = 0
    for new_rel, old_rel, length in [*runs, (new.length, 0, 0)]:
        yield from _cut(new, None, rel, new_rel - rel, chunk_size)  # added elements
        yield from _cut(new, old_rel, new_rel, length, chunk_size)
        rel = new_rel + length


def _cut(
    new: Tensor, old_rel: int | None, rel: int, length: int, chunk_size: int
) -> Iterator[ChunkPlan]:
    """``length`` bytes of ``new`` from ``rel``, aligned with the old tensor's ``old_rel``
    (absolute old offset) or with nothing."""
    end = rel + length
    while rel < end:
        size = min(chunk_size, end - rel)
        offset = new.offset + rel
        if old_rel is None:
            yield ChunkPlan(offset, size, new.width, new.ops, True, new.baseless_ops, None)
        else:
            yield ChunkPlan(
                offset, size, new.width, new.ops, True, new.baseless_ops, old_rel, old_rel, size
            )
            old_rel += size
        rel += size


def _unaligned(new: Tensor, old: Tensor, chunk_size: int) -> Iterator[ChunkPlan]:
    rel = 0
    while rel < new.length:
        length = min(chunk_size, new.length - rel)
        centre = old.offset + rel * old.length // new.length
        cp_offset, cp_length = _window(
            centre - chunk_size, centre + length + chunk_size, old.offset, old.offset + old.length
        )
        yield ChunkPlan(
            new.offset + rel, length, new.width, new.ops, True, new.baseless_ops,
            None, cp_offset, cp_length,
        )  # fmt: skip
        rel += length


def common_runs(new: Tensor, old: Tensor | None) -> list[tuple[int, int, int]]:
    """(new offset within the tensor, absolute old offset, length) of every run of bytes
    that holds the same elements in both versions, in new-file order.

    Same length: the whole tensor. Both shapes known, same rank: the common block
    ``[min(d0), min(d1), …]`` in row-major order — one run per index of the dims
    before the last one that changed, each as long as the common part of that
    dimension times everything inside it. Runs shorter than ``MIN_RUN`` bytes, or
    more than ``MAX_RUNS`` of them, give none (a chunk per run would cost more than
    it saves). Anything else: none.
    """
    if old is None or old.width != new.width:
        return []
    if old.length == new.length:
        return [(0, old.offset, new.length)]
    if old.is_float != new.is_float or not new.shape or len(new.shape) != len(old.shape):
        return []
    pairs = enumerate(zip(new.shape, old.shape, strict=True))
    changed = max((i for i, (a, b) in pairs if a != b), default=-1)
    if changed < 0:
        return []
    inner = new.width
    for dim in new.shape[changed + 1 :]:
        inner *= dim
    run = min(new.shape[changed], old.shape[changed]) * inner
    outer = [min(a, b) for a, b in zip(new.shape[:changed], old.shape[:changed], strict=True)]
    count = 1
    for dim in outer:
        count *= dim
    if count > 1 and (run < MIN_RUN or count > MAX_RUNS):
        return []
    new_strides, old_strides = _strides(new.shape, new.width), _strides(old.shape, old.width)
    runs = []
    for index in itertools.product(*(range(dim) for dim in outer)):
        new_at = sum(i * s for i, s in zip(index, new_strides, strict=False))
        old_at = sum(i * s for i, s in zip(index, old_strides, strict=False))
        runs.append((new_at, old.offset + old_at, run))
    return runs


def _strides(shape: tuple[int, ...], width: int) -> list[int]:
    """Bytes between consecutive indices of each dimension (row-major)."""
    strides, step = [], width
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return strides[::-1]


def _window(start: int, end: int, low: int, high: int) -> tuple[int, int]:
    start, end = max(start, low), min(end, high)
    return (start, end - start) if end > start else (0, 0)


def old_pieces(
    old_layout: list[Tensor] | None, old_size: int, chunk_size: int
) -> list[tuple[int, int]]:
    """The old file cut the way the new one is, so identical chunks are found by hash."""
    return [(p.offset, p.length) for p in plan_chunks(old_layout, old_size, None, None, chunk_size)]
