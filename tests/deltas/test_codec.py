"""The lane codecs: exact inverses, equal to per-element arithmetic, and the numpy
fast path equal to the pure-Python one."""

from __future__ import annotations

import random
import struct

import pytest

from ferry.protocol.delta import DeltaCorruptError, codec
from ferry.protocol.delta.codec import (
    BASE_OPS,
    WIDTHS,
    Op,
    lane_delta,
    lane_restore,
    merge_planes,
    split_planes,
)

SIZES = (0, 1, 7, 8, 9, 64, 1001)
FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("width", WIDTHS)
def test_byte_planes_round_trip(size: int, width: int) -> None:
    data = random.Random(size * 10 + width).randbytes(size)
    assert merge_planes(split_planes(data, width), width) == data


def test_byte_planes_group_byte_i_of_every_element() -> None:
    assert split_planes(bytes(range(8)), 4) == bytes([0, 4, 1, 5, 2, 6, 3, 7])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("op", list(Op))
def test_lane_transforms_round_trip(size: int, width: int, op: Op) -> None:
    rng = random.Random(size + width * 7 + op * 31)
    new = rng.randbytes(size)
    old = rng.randbytes(size) if op in BASE_OPS else None
    assert lane_restore(lane_delta(new, old, op, width), old, op, width) == new


def test_rotation_puts_a_float32_exponent_alone_in_the_top_byte() -> None:
    one, minus_one = struct.pack("<f", 1.0), struct.pack("<f", -1.0)  # exponent 127
    rotated = lane_delta(one + minus_one, None, Op.ROT, 4)
    assert rotated[3] == rotated[7] == 127
    assert (rotated[0] & 1, rotated[4] & 1) == (0, 1)  # the sign went to the lowest bit


@pytest.mark.parametrize("width", WIDTHS)
def test_lane_subtraction_never_borrows_across_elements(width: int) -> None:
    """SWAR subtraction must equal element-wise (new - old) mod 2**bits, edge values included."""
    bits = 8 * width
    edges = [0, 1, (1 << (bits - 1)) - 1, 1 << (bits - 1), (1 << bits) - 1]
    rng = random.Random(width)
    new = edges + [rng.getrandbits(bits) for _ in range(200)] + edges[::-1]
    old = edges[::-1] + [rng.getrandbits(bits) for _ in range(200)] + edges
    fmt = f"<{len(new)}{FORMATS[width]}"
    delta = struct.unpack(
        fmt, lane_delta(struct.pack(fmt, *new), struct.pack(fmt, *old), Op.SUB, width)
    )
    assert list(delta) == [(a - b) % (1 << bits) for a, b in zip(new, old, strict=True)]


def test_zigzag_maps_small_differences_of_either_sign_to_small_codes() -> None:
    new = struct.pack("<4i", 10, 10, 10, -5)
    old = struct.pack("<4i", 10, 11, 9, 5)
    codes = struct.unpack("<4I", lane_delta(new, old, Op.SUBZZ, 4))
    assert codes == (0, 1, 2, 19)  # 0 → 0, -1 → 1, +1 → 2, -10 → 19


# Past one numpy window (256 KiB) and several 64 KiB big-integer slices, odd sizes.
WINDOWED_SIZES = (0, 1, 7, 9, 1001, 3 * 65_536 + 5, 600_013)


@pytest.mark.parametrize("size", WINDOWED_SIZES)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("op", list(Op))
def test_restore_planes_equals_merge_then_restore(
    size: int, width: int, op: Op, lanes: str
) -> None:
    """Both decode paths work a window or slice at a time; the bytes must not change."""
    rng = random.Random(size * 5 + width * 13 + op * 3)
    new = rng.randbytes(size)
    old = rng.randbytes(size) if op in BASE_OPS else None
    planes = split_planes(lane_delta(new, old, op, width), width)
    assert codec.restore_planes(planes, old, op, width) == new


# --- the numpy fast path gives the same bytes as the big-integer lanes ------------------

np_lanes = pytest.importorskip("ferry.protocol.delta._lanes_np")


@pytest.mark.parametrize("size", (*SIZES, 65_543))
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("op", list(Op))
def test_numpy_restore_equals_the_big_integer_restore(size: int, width: int, op: Op) -> None:
    rng = random.Random(size * 3 + width * 11 + op * 5)
    edges = b"\x00\xff\x7f\x80\x01\xfe" * (size // 6)  # carries and signs at every lane edge
    new = (edges + rng.randbytes(size))[:size]
    old = (
        (rng.randbytes(size // 2) + edges + rng.randbytes(size))[:size] if op in BASE_OPS else None
    )
    planes = split_planes(lane_delta(new, old, op, width), width)
    pure = lane_restore(merge_planes(planes, width), old, op, width)
    assert pure == new
    assert np_lanes.merge_restore(planes, old, int(op), width) == new


def test_numpy_restore_refuses_a_base_op_without_old_bytes() -> None:
    with pytest.raises(DeltaCorruptError):
        np_lanes.merge_restore(bytes(64), None, int(Op.SUBZZ), 4)
    with pytest.raises(DeltaCorruptError):
        np_lanes.merge_restore(bytes(3), bytes(3), 9, 4)


def test_restore_planes_falls_back_to_big_integers_without_numpy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(codec.PURE_PYTHON_ENV, "1")
    codec._accelerated.cache_clear()
    try:
        assert not codec.uses_numpy()
        rng = random.Random(9)
        new, old = rng.randbytes(4099), rng.randbytes(4099)
        planes = split_planes(lane_delta(new, old, Op.SUBZZ, 4), 4)
        assert codec.restore_planes(planes, old, Op.SUBZZ, 4) == new
    finally:
        monkeypatch.delenv(codec.PURE_PYTHON_ENV)
        codec._accelerated.cache_clear()
    assert codec.uses_numpy()
