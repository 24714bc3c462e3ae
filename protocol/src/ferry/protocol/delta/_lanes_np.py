"""numpy versions of the decoder's per-byte steps: the same bytes as the pure-Python
ones in :mod:`ferry.protocol.delta.codec`, about ten times faster.

numpy is optional on a device (``pip install 'ferry-protocol[fast]'``); the decoder
imports this module only when it decodes its first lane chunk, and falls back to
the big-integer code when numpy is missing. Every function writes into one
preallocated ``bytearray`` (numpy works in place on it: no copy into ``bytes``),
and numpy releases the GIL in these loops, so the hashing thread runs beside them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ferry.protocol.delta._errors import DeltaCorruptError

_DTYPES: dict[int, np.dtype[np.unsignedinteger[Any]]] = {
    1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8"),
}  # fmt: skip

# Op values (codec.Op), repeated here so that codec can import this module lazily.
_XOR, _SUB, _SUBZZ, _ROT, _XORROT = 1, 2, 3, 4, 5
_OPS = frozenset({0, _XOR, _SUB, _SUBZZ, _ROT, _XORROT})


_WINDOW = 256 << 10  # bytes of lanes per step: numpy's temporaries never exceed it


def merge_restore(
    planes: bytes | bytearray | memoryview,
    old: bytes | bytearray | memoryview | None,
    op: int,
    width: int,
) -> bytearray:
    """``lane_restore(merge_planes(planes, width), old, op, width)`` in one buffer.

    The lanes are merged and restored one window at a time, in place in the output:
    the temporaries of the lane steps (``lanes & 1``, the zig-zag sign) are then
    one window each instead of one chunk each.
    """
    size = len(planes)
    usable = size - size % width
    count = usable // width
    if op not in _OPS:
        raise DeltaCorruptError(f"lane operation {op} is unknown")
    if old is None and op not in (0, _ROT):
        raise DeltaCorruptError("a lane delta needs its old bytes")
    out = bytearray(size)
    grouped = np.frombuffer(planes, np.uint8, usable).reshape(width, count)
    dtype, step = _DTYPES[width], _WINDOW // width
    for first in range(0, count, step):
        number = min(step, count - first)
        window = np.frombuffer(out, np.uint8, number * width, first * width)
        for i in range(width):  # one strided copy per plane: ~3x faster than grouped.T
            window[i::width] = grouped[i, first : first + number]
        if op:
            base = None if old is None else np.frombuffer(old, dtype, number, first * width)
            _restore_lanes(window.view(dtype), base, op, width)
    tail = memoryview(planes)[usable:]
    if op in (0, _ROT) or old is None:
        out[usable:] = tail
    else:
        out[usable:] = bytes(a ^ b for a, b in zip(tail, memoryview(old)[usable:size], strict=True))
    return out


def _restore_lanes(
    lanes: npt.NDArray[np.unsignedinteger[Any]],
    base: npt.NDArray[np.unsignedinteger[Any]] | None,
    op: int,
    width: int,
) -> None:
    """Undo one known lane operation in place (``base`` is None only for ROT)."""
    one = lanes.dtype.type(1)
    if op in (_ROT, _XORROT):
        low = lanes & one
        lanes >>= one
        low <<= lanes.dtype.type(8 * width - 1)
        lanes |= low
    if op == _ROT:
        return
    assert base is not None
    if op in (_XOR, _XORROT):
        lanes ^= base
        return
    if op == _SUBZZ:
        sign = lanes & one
        lanes >>= one
        np.negative(sign, out=sign)  # unsigned: 0 or all ones
        lanes ^= sign
    lanes += base  # SUB and SUBZZ: wraps modulo 2**bits, as the big-integer lanes do


def sparse_fill(skips: bytes, values: bytes, out_size: int) -> bytearray:
    """The sparse residual: value i at ``sum(skips[:i + 1]) + i`` (sizes checked by the caller)."""
    out = bytearray(out_size)
    if not skips:
        return out
    steps: npt.NDArray[np.int64] = np.frombuffer(skips, np.uint8).astype(np.int64)
    steps += 1
    positions = np.cumsum(steps)
    positions -= 1
    if int(positions[-1]) >= out_size:
        raise DeltaCorruptError("sparse payload's symbols run past the chunk")
    np.frombuffer(out, np.uint8)[positions] = np.frombuffer(values, np.uint8)
    return out
