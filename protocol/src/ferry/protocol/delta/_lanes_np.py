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


def merge_restore(
    planes: bytes | bytearray | memoryview,
    old: bytes | bytearray | memoryview | None,
    op: int,
    width: int,
) -> bytearray:
    """``lane_restore(merge_planes(planes, width), old, op, width)`` in one buffer."""
    size = len(planes)
    usable = size - size % width
    count = usable // width
    out = bytearray(size)
    if width == 1:
        out[:] = planes
    else:
        grouped = np.frombuffer(planes, np.uint8, usable).reshape(width, count)
        target = np.frombuffer(out, np.uint8, usable)
        for i in range(width):  # one strided copy per plane: ~3x faster than grouped.T
            target[i::width] = grouped[i]
    tail = bytes(memoryview(planes)[usable:])
    if op == 0:
        out[usable:] = tail
        return out
    dtype = _DTYPES[width]
    lanes = np.frombuffer(out, dtype, count)
    one = dtype.type(1)
    if op in (_ROT, _XORROT):
        low = lanes & one
        lanes >>= one
        low <<= dtype.type(8 * width - 1)
        lanes |= low
    if op == _ROT:
        out[usable:] = tail
        return out
    if old is None:
        raise DeltaCorruptError("a lane delta needs its old bytes")
    base = np.frombuffer(old, dtype, count)
    if op in (_XOR, _XORROT):
        lanes ^= base
    else:
        if op == _SUBZZ:
            sign = lanes & one
            lanes >>= one
            np.negative(sign, out=sign)  # unsigned: 0 or all ones
            lanes ^= sign
        elif op != _SUB:
            raise DeltaCorruptError(f"lane operation {op} is not a base operation")
        lanes += base  # wraps modulo 2**bits, as the big-integer lanes do
    if usable != size:
        old_tail = bytes(memoryview(old)[usable:size])
        out[usable:] = bytes(a ^ b for a, b in zip(tail, old_tail, strict=True))
    return out


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
