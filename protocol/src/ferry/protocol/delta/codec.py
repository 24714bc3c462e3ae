"""Chunk codecs shared by the server's encoder and the device's decoder, in pure Python.

Float-aware deltas work on *lanes* (one lane = one tensor element of ``width``
bytes, little-endian as in safetensors and ONNX ``raw_data``). A whole chunk is
turned into one big integer, so XOR, lane-wise subtraction and zig-zag run as a
handful of C-speed big-integer operations instead of a Python loop per element
(SWAR: the carry out of one lane is masked away before it reaches the next).
Byte planes put byte 0 of every element first, then byte 1, …: after a
fine-tune the high planes (sign, exponent) are almost all zero and compress to
nothing, which byte-level diff tools cannot see.
"""

from __future__ import annotations

import bz2
import os
import re
import struct
from collections.abc import Callable
from enum import IntEnum
from functools import lru_cache
from types import ModuleType

import bsdiff4.core
import zstandard

from ferry.protocol.delta._errors import DeltaCorruptError, DeltaTooLargeError

WIDTHS = (1, 2, 4, 8)
BSDIFF_MAGIC = b"BSDIFF40"
_BSDIFF_HEADER = 32


class Op(IntEnum):
    """How a chunk's lanes are transformed before byte planes and zstd."""

    NONE = 0  # the lanes as they are
    XOR = 1  # new ^ old
    SUB = 2  # new - old per lane (mod 2**bits): small for int8/int16 drift
    SUBZZ = 3  # zig-zag(new - old): small magnitudes of either sign → small codes
    ROT = 4  # lanes rotated left one bit: a float's exponent fills the top byte alone
    XORROT = 5  # rotated (new ^ old)


BASELESS_OPS = frozenset({Op.NONE, Op.ROT})  # for chunks coded without the old artifact
BASE_OPS = frozenset({Op.XOR, Op.SUB, Op.SUBZZ, Op.XORROT})  # for lane deltas


# --- byte planes --------------------------------------------------------------------


def split_planes(data: bytes | bytearray | memoryview, width: int) -> bytes:
    """Byte ``i`` of every element, for i = 0..width-1, then the odd tail bytes."""
    if width == 1:
        return bytes(data)
    raw = bytes(data)  # strided slices of bytes are ~8x faster than of a memoryview
    usable = len(raw) - len(raw) % width
    return b"".join(raw[i:usable:width] for i in range(width)) + raw[usable:]


def merge_planes(data: bytes | bytearray | memoryview, width: int) -> bytes | bytearray:
    """Inverse of :func:`split_planes`: strided slice assignment, no per-byte loop.

    Returns the buffer it filled (no copy into ``bytes``): the decoder only reads it.
    """
    if width == 1:
        return data if isinstance(data, bytes) else bytes(data)
    usable = len(data) - len(data) % width
    count = usable // width
    out = bytearray(len(data))
    view = memoryview(data)
    for i in range(width):
        out[i:usable:width] = view[i * count : (i + 1) * count]
    out[usable:] = view[usable:]
    return out


# --- the decoder's fast path ---------------------------------------------------------

PURE_PYTHON_ENV = "FERRY_DELTA_PURE_PYTHON"  # set to 1: never use numpy (tests, benchmarks)


@lru_cache(maxsize=1)
def _accelerated() -> ModuleType | None:
    """The numpy lane module when numpy is installed (imported on first use), else None."""
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None
    try:
        from ferry.protocol.delta import _lanes_np
    except ImportError:
        return None
    return _lanes_np


def uses_numpy() -> bool:
    """Whether the decoder's lane steps run on numpy here (for benchmarks and logs)."""
    return _accelerated() is not None


def restore_planes(
    planes: bytes | bytearray | memoryview,
    old: bytes | bytearray | memoryview | None,
    op: Op,
    width: int,
) -> bytes | bytearray:
    """``lane_restore(merge_planes(planes, width), old, op, width)``: numpy when it is
    installed, big integers otherwise (same bytes; tests/deltas/test_codec.py)."""
    fast = _accelerated()
    if fast is not None:
        result: bytearray = fast.merge_restore(planes, old, int(op), width)
        return result
    if op is Op.NONE or width == 1:
        return lane_restore(merge_planes(planes, width), old, op, width)
    return _merge_restore(planes, old, op, width)


# --- lane arithmetic on big integers ---------------------------------------------------


@lru_cache(maxsize=8)
def _masks(usable: int, width: int) -> tuple[int, int, int, int]:
    """(top bit of every lane, all other bits, lowest bit of every lane, ones per lane)."""
    count = usable // width
    top = int.from_bytes((b"\x00" * (width - 1) + b"\x80") * count, "little")
    low = int.from_bytes((b"\x01" + b"\x00" * (width - 1)) * count, "little")
    full = (1 << (8 * usable)) - 1
    return top, full ^ top, low, (1 << (8 * width)) - 1


def _sub(a: int, b: int, top: int, rest: int) -> int:
    return ((a | top) - (b & rest)) ^ ((a ^ ~b) & top)


def _add(a: int, b: int, top: int, rest: int) -> int:
    return ((a & rest) + (b & rest)) ^ ((a ^ b) & top)


def _spread(bits_at_lane_bottom: int, width: int) -> int:
    """Turn a 1 in a lane's lowest bit into all ones in that lane (shift-subtract, no carries)."""
    return (bits_at_lane_bottom << (8 * width)) - bits_at_lane_bottom


def _zigzag(d: int, usable: int, width: int) -> int:
    top, _rest, low, _lane = _masks(usable, width)
    negative = _spread((d & top) >> (8 * width - 1), width)
    return ((d << 1) & ((1 << (8 * usable)) - 1) & ~low) ^ negative


def _unzigzag(z: int, usable: int, width: int) -> int:
    _top, rest, low, _lane = _masks(usable, width)
    return ((z >> 1) & rest) ^ _spread(z & low, width)


def _rotl(x: int, usable: int, width: int) -> int:
    top, _rest, low, _lane = _masks(usable, width)
    return ((x << 1) & ((1 << (8 * usable)) - 1) & ~low) | ((x & top) >> (8 * width - 1))


def _rotr(x: int, usable: int, width: int) -> int:
    _top, rest, low, _lane = _masks(usable, width)
    return ((x >> 1) & rest) | ((x & low) << (8 * width - 1))


def lane_delta(
    new: bytes | bytearray | memoryview,
    old: bytes | bytearray | memoryview | None,
    op: Op,
    width: int,
) -> bytes | bytearray:
    """The residual of ``new`` (against ``old`` of the same length for base ops).

    Bytes past the last whole lane (odd-sized chunks only) are XORed with the old
    ones, or kept as they are without a base.
    """
    if op is Op.NONE:
        return bytes(new)
    return _by_slices(_delta_slice, new, old, op, width)


def lane_restore(
    residual: bytes | bytearray | memoryview,
    old: bytes | bytearray | memoryview | None,
    op: Op,
    width: int,
) -> bytes | bytearray:
    """Inverse of :func:`lane_delta`: rebuild the new bytes from the residual (and the old)."""
    if op is Op.NONE:
        return residual if isinstance(residual, (bytes, bytearray)) else bytes(residual)
    return _by_slices(_restore_slice, residual, old, op, width)


_SLICE = 64 << 10  # a multiple of every lane width, so only the last slice has a tail
_SliceOp = Callable[[memoryview, "memoryview | None", Op, int], bytes]


def _by_slices(
    step: _SliceOp,
    a: bytes | bytearray | memoryview,
    b: bytes | bytearray | memoryview | None,
    op: Op,
    width: int,
) -> bytearray:
    """Run a lane operation 64 KiB at a time into one preallocated buffer.

    Lanes are independent, so slicing changes nothing in the result; but each
    big-integer step allocates and walks a fresh integer the size of its input,
    and on 64 KiB integers (cache-resident, no fresh pages) the same work takes
    less than half the time it takes on whole 1 MiB chunks (measured).
    """
    out = bytearray(len(a))
    va = memoryview(a)
    vb = None if b is None else memoryview(b)
    for start in range(0, len(a), _SLICE):
        end = start + _SLICE
        out[start:end] = step(va[start:end], None if vb is None else vb[start:end], op, width)
    return out


def _merge_restore(
    planes: bytes | bytearray | memoryview,
    old: bytes | bytearray | memoryview | None,
    op: Op,
    width: int,
) -> bytearray:
    """``lane_restore(merge_planes(planes, width), …)`` one slice at a time.

    Each slice's lanes are gathered from the planes into one reused buffer, so the
    merged chunk never exists whole (one chunk-sized buffer less) and the gather
    writes stay in cache for the big-integer steps that read them next.
    """
    size = len(planes)
    usable = size - size % width
    count = usable // width
    if old is None and op not in BASELESS_OPS:
        raise DeltaCorruptError("a lane delta needs its old bytes")
    view, base = memoryview(planes), None if old is None else memoryview(old)
    out = bytearray(size)
    lanes = bytearray(min(_SLICE, usable))
    for start in range(0, usable, _SLICE):
        end = min(start + _SLICE, usable)
        if end - start != len(lanes):
            lanes = bytearray(end - start)
        _gather(view, lanes, start // width, count, width)
        part = None if base is None else base[start:end]
        out[start:end] = _restore_slice(memoryview(lanes), part, op, width)
    tail = view[usable:]
    out[usable:] = tail if base is None else _xor(tail, base[usable:size])
    return out


def _gather(planes: memoryview, lanes: bytearray, first: int, count: int, width: int) -> None:
    """Lanes ``first…`` (as many as ``lanes`` holds) from planes of ``count`` lanes each."""
    number = len(lanes) // width
    for i in range(width):
        at = i * count + first
        lanes[i::width] = planes[at : at + number]


def _delta_slice(new: memoryview, old: memoryview | None, op: Op, width: int) -> bytes:
    if op is Op.XOR:
        return _xor(new, old)  # type: ignore[arg-type]
    usable = len(new) - len(new) % width
    if op is Op.ROT:
        x = _rotl(_int(new, usable), usable, width)
    elif op is Op.XORROT:
        x = _rotl(_int(new, usable) ^ _int(old, usable), usable, width)  # type: ignore[arg-type]
    else:
        top, rest, _, _ = _masks(usable, width)
        x = _sub(_int(new, usable), _int(old, usable), top, rest)  # type: ignore[arg-type]
        if op is Op.SUBZZ:
            x = _zigzag(x, usable, width)
    return _tail(x.to_bytes(usable, "little"), new, old, usable)


def _restore_slice(residual: memoryview, old: memoryview | None, op: Op, width: int) -> bytes:
    if op is Op.XOR:
        return _xor(residual, old)  # type: ignore[arg-type]
    usable = len(residual) - len(residual) % width
    x = _int(residual, usable)
    if op is Op.ROT:
        x = _rotr(x, usable, width)
    elif op is Op.XORROT:
        x = _rotr(x, usable, width) ^ _int(old, usable)  # type: ignore[arg-type]
    else:
        top, rest, _, _ = _masks(usable, width)
        if op is Op.SUBZZ:
            x = _unzigzag(x, usable, width)
        x = _add(x, _int(old, usable), top, rest)  # type: ignore[arg-type]
    return _tail(x.to_bytes(usable, "little"), residual, old, usable)


def _int(data: bytes | memoryview, usable: int) -> int:
    """The first ``usable`` bytes as one little-endian integer, without copying when whole."""
    return int.from_bytes(data if usable == len(data) else memoryview(data)[:usable], "little")


def _tail(lanes: bytes, a: bytes | memoryview, b: bytes | memoryview | None, usable: int) -> bytes:
    if usable == len(a):
        return lanes
    if b is None:
        return lanes + bytes(memoryview(a)[usable:])
    return lanes + _xor(memoryview(a)[usable:], memoryview(b)[usable:])


def _xor(a: bytes | memoryview, b: bytes | memoryview) -> bytes:
    size = len(a)
    x = int.from_bytes(a, "little") ^ int.from_bytes(b, "little")
    return x.to_bytes(size, "little")


# --- sparse residuals --------------------------------------------------------------------

SPARSE_SHARE = 8  # a sparse residual has at most one symbol per 8 output bytes
_SPARSE_HEAD = struct.Struct(">II")  # symbol count, length of the skips frame
_NONZERO = re.compile(rb"[^\x00]")
_LONG_SKIP = 255


def sparse_encode(residual: bytes | bytearray, level: int) -> bytes | None:
    """Code a mostly-zero residual as (skip, value) symbols; None when not sparse enough.

    Symbol i skips ``skip`` zero bytes and then writes ``value`` (a skip of 255
    with value 0 just moves 256 bytes on, for longer gaps). Skips and values go
    to two zstd frames: each stream is far more regular on its own than
    interleaved, which is what bzip2 and bsdiff see (re-quantised int8: ~8%
    smaller than bzip2 of the residual).
    """
    cap = len(residual) // SPARSE_SHARE
    if len(residual) - residual.count(0) > cap:
        return None
    skips, values = bytearray(), bytearray()
    last = -1
    for match in _NONZERO.finditer(residual):
        at = match.start()
        gap = at - last - 1
        while gap > _LONG_SKIP:
            skips.append(_LONG_SKIP)
            values.append(0)
            gap -= _LONG_SKIP + 1
        skips.append(gap)
        values.append(residual[at])
        last = at
    if not skips or len(skips) > cap:
        return None
    compressor = zstandard.ZstdCompressor(level=level)
    first = compressor.compress(bytes(skips))
    return _SPARSE_HEAD.pack(len(skips), len(first)) + first + compressor.compress(bytes(values))


def sparse_decode(payload: bytes, out_size: int) -> bytearray:
    """Inverse of :func:`sparse_encode`, with every size checked before it is allocated.

    The symbol count is capped at ``out_size // SPARSE_SHARE`` and both frames
    must declare exactly that many bytes; the skips must fit in the output
    before any byte is written.
    """
    if len(payload) < _SPARSE_HEAD.size:
        raise DeltaCorruptError("sparse payload is shorter than its header")
    count, first = _SPARSE_HEAD.unpack_from(payload)
    if count > out_size // SPARSE_SHARE:
        raise DeltaTooLargeError(f"sparse payload declares {count} symbols for {out_size} bytes")
    body = _SPARSE_HEAD.size
    if body + first > len(payload):
        raise DeltaCorruptError("sparse payload's skips frame runs past the payload")
    skips = zstd_decompress(payload[body : body + first], count)
    values = zstd_decompress(payload[body + first :], count)
    if sum(skips) + count > out_size:
        raise DeltaCorruptError("sparse payload's symbols run past the chunk")
    fast = _accelerated()
    if fast is not None:
        filled: bytearray = fast.sparse_fill(skips, values, out_size)
        return filled
    out = bytearray(out_size)
    position = -1
    for skip, value in zip(skips, values):
        position += skip + 1
        out[position] = value
    return out


# --- bounded decompression ---------------------------------------------------------------


def zstd_decompress(payload: bytes, out_size: int, source: bytes | None = None) -> bytes:
    """Decompress one zstd frame that must declare exactly ``out_size`` bytes.

    The declared content size is checked *before* decompressing: python-zstandard
    trusts it over ``max_output_size``, so a forged frame could otherwise make it
    allocate whatever it claims (decompression bomb).
    """
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as exc:
        raise DeltaCorruptError(f"chunk payload is not a zstd frame: {exc}") from exc
    if params.content_size != out_size:
        raise DeltaCorruptError(
            f"zstd frame declares {params.content_size} bytes, the chunk {out_size}"
        )
    if params.window_size > max(2 * (out_size + (len(source) if source else 0)), 1 << 20):
        raise DeltaTooLargeError(f"zstd frame asks for a {params.window_size}-byte window")
    if source is None:
        dctx = zstandard.ZstdDecompressor()
    else:
        prefix = zstandard.ZstdCompressionDict(source, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        dctx = zstandard.ZstdDecompressor(dict_data=prefix)
    try:
        out = dctx.decompress(payload, max_output_size=out_size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise DeltaCorruptError(f"zstd payload does not decompress: {exc}") from exc
    if len(out) != out_size:
        raise DeltaCorruptError(f"zstd payload gave {len(out)} bytes, expected {out_size}")
    return out


def bz2_decompress(payload: bytes | memoryview, out_size: int) -> bytes:
    """One bzip2 stream of exactly ``out_size`` bytes, never inflated past that."""
    out = _bz2_bounded(payload, out_size, "residual")
    if len(out) != out_size:
        raise DeltaCorruptError(f"bzip2 payload gave {len(out)} bytes, expected {out_size}")
    return out


def _bz2_bounded(data: bytes | memoryview, cap: int, what: str) -> bytes:
    """One complete bz2 stream of at most ``cap`` bytes, refused as soon as it exceeds."""
    decomp = bz2.BZ2Decompressor()
    try:
        out = decomp.decompress(data, max_length=cap + 1)
    except (OSError, EOFError, ValueError) as exc:
        raise DeltaCorruptError(f"{what} block is not bzip2: {exc}") from exc
    if len(out) > cap:
        raise DeltaTooLargeError(f"{what} block expands beyond {cap} bytes")
    if not decomp.eof or decomp.unused_data:
        raise DeltaCorruptError(f"{what} block is truncated or has trailing data")
    return out


def _offtin(raw: bytes | memoryview) -> int:
    """bsdiff's sign-magnitude little-endian int64."""
    value = int.from_bytes(raw, "little")
    return -(value & ~(1 << 63)) if value >> 63 else value


def bsdiff_sizes(patch: bytes | memoryview) -> tuple[int, int, int]:
    """(control, diff, new size) from a BSDIFF40 header, validated against the patch length."""
    if len(patch) < _BSDIFF_HEADER or bytes(patch[:8]) != BSDIFF_MAGIC:
        raise DeltaCorruptError("bsdiff payload does not start with BSDIFF40")
    lc, ld, ln = (_offtin(patch[i : i + 8]) for i in (8, 16, 24))
    if min(lc, ld, ln) < 0 or _BSDIFF_HEADER + lc + ld > len(patch):
        raise DeltaCorruptError("bsdiff header sizes are inconsistent with the payload")
    return lc, ld, ln


def control_cap(out_size: int) -> int:
    """Most control bytes a chunk may carry: one 24-byte triple per 8 output bytes."""
    return 3 * out_size + 4096


def bspatch(source: bytes, patch: bytes, out_size: int) -> bytes:
    """Apply a BSDIFF40 patch whose blocks are each decompressed under a cap first."""
    lc, ld, ln = bsdiff_sizes(patch)
    if ln != out_size:
        raise DeltaCorruptError(f"bsdiff patch makes {ln} bytes, the chunk {out_size}")
    view = memoryview(patch)
    control = _bz2_bounded(
        view[_BSDIFF_HEADER : _BSDIFF_HEADER + lc], control_cap(out_size), "control"
    )
    if len(control) % 24:
        raise DeltaCorruptError("bsdiff control block is not a list of triples")
    body = _BSDIFF_HEADER + lc
    diff = _bz2_bounded(view[body : body + ld], out_size, "bsdiff diff")
    extra = _bz2_bounded(view[body + ld :], out_size, "bsdiff extra")
    try:
        patched: bytes = bsdiff4.core.patch(source, out_size, control, diff, extra)
        return patched
    except (ValueError, MemoryError, OverflowError) as exc:
        raise DeltaCorruptError(f"bsdiff patch does not apply: {exc}") from exc
