"""The pure-Python lane codecs: exact inverses, and equal to per-element arithmetic."""

from __future__ import annotations

import random
import struct

import pytest

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
