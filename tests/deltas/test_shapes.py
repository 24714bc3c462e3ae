"""A tensor whose shape changed is aligned with its old version over the elements both
have (rows, columns, the leading block in general).

Before: a vocabulary extension (3,000 → 3,100 rows × 64, plus a small fine-tune) cost
85.4 % of the new file, because the grown embedding was paired only with a window of
its old bytes (byte matching finds nothing once every weight drifted); whole-file
bsdiff4 costs 94.8 %. Aligning the common rows makes it ~52 %.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import random
from pathlib import Path

import bsdiff4
import pytest

from ferry.protocol.delta import Codec, apply_delta_file
from ferry.protocol.delta.encode import _plan, build_delta
from ferry.protocol.delta.encode._layout import read_layout, row_bytes
from ferry.protocol.delta.encode._plan import common_runs
from ferry.protocol.delta.encode._tensor import Tensor, checked_shape
from tests.deltas.models import (
    SMALL,
    drift,
    f32,
    floats,
    split_delta,
    vocabulary_pair,
    write_safetensors,
)


def _round_trip(old: Path, new: Path, tmp_path: Path) -> tuple[int, list[tuple[int, Codec]]]:
    result = build_delta(old, new, tmp_path / "delta", SMALL)
    data = new.read_bytes()
    out = tmp_path / "out"
    apply_delta_file(old, result.path, out, len(data), hashlib.sha256(data).hexdigest())
    assert out.read_bytes() == data
    _, chunks = split_delta(result.path.read_bytes())
    return result.size, [(record.src_offset, record.codec) for record, _ in chunks]


def test_grown_embedding_plus_fine_tune_is_smaller_than_before_and_than_bsdiff(
    tmp_path: Path,
) -> None:
    old, new = vocabulary_pair(tmp_path)
    size, _ = _round_trip(old, new, tmp_path)
    new_size = new.stat().st_size
    whole_file_bsdiff = len(bsdiff4.diff(old.read_bytes(), new.read_bytes()))
    assert size < 0.65 * new_size  # was 0.854
    assert size < 0.7 * whole_file_bsdiff


def test_common_rows_are_lane_coded_against_the_same_old_rows(tmp_path: Path) -> None:
    old, new = vocabulary_pair(tmp_path)
    _, chunks = _round_trip(old, new, tmp_path)
    with open(old, "rb") as handle:
        layout = read_layout(handle.fileno(), old.stat().st_size)
    assert layout is not None
    embedding = next(t for t in layout if t.name == "embeddings.weight")
    lane_coded = [src for src, codec in chunks if codec is Codec.FLOAT]
    assert embedding.offset in lane_coded
    covered = [
        src for src in lane_coded if embedding.offset <= src < embedding.offset + embedding.length
    ]
    assert len(covered) >= embedding.length // SMALL.chunk_size


def test_pruned_rows_align_the_rows_that_remain(tmp_path: Path) -> None:
    """Shrinking dim 0 (a pruned head): the delta is as small as if nothing was cut."""
    rng = random.Random(3)
    values = floats(rng, 2_000 * 32)
    old = write_safetensors(tmp_path / "old", {"head": ("F32", f32(values))}, {"head": [2_000, 32]})
    kept = drift(values[: 1_500 * 32], rng)
    new = write_safetensors(tmp_path / "new", {"head": ("F32", f32(kept))}, {"head": [1_500, 32]})
    size, chunks = _round_trip(old, new, tmp_path)
    assert all(codec is not Codec.ZSTD for _, codec in chunks[1:])
    assert size < 0.65 * new.stat().st_size


def _reshaped(
    tmp_path: Path, old_shape: list[int], new_shape: list[int], seed: int = 4
) -> tuple[Path, Path, list[float]]:
    """(old, new, old values): the elements both shapes have drift a little, the others
    are new random values; written row-major as safetensors."""
    rng = random.Random(seed)
    count = 1
    for dim in old_shape:
        count *= dim
    values = floats(rng, count)
    old_index = {index: i for i, index in enumerate(itertools.product(*map(range, old_shape)))}
    new_values = [
        values[old_index[index]] * (1.0 + rng.gauss(0.0, 1e-3))
        if index in old_index
        else rng.gauss(0.0, 0.05)
        for index in itertools.product(*map(range, new_shape))
    ]
    old = write_safetensors(tmp_path / "old", {"w": ("F32", f32(values))}, {"w": old_shape})
    new = write_safetensors(tmp_path / "new", {"w": ("F32", f32(new_values))}, {"w": new_shape})
    return old, new, values


def _offset_of(path: Path) -> int:
    with open(path, "rb") as handle:
        layout = read_layout(handle.fileno(), path.stat().st_size)
    assert layout is not None
    return layout[0].offset


@pytest.mark.parametrize(
    ("old_shape", "new_shape"),
    [
        ([48, 1_200], [48, 1_300]),  # grown columns ([768, 30522] → [768, 31522] in small)
        ([48, 1_300], [48, 1_200]),  # pruned columns
        ([12, 30, 64], [14, 28, 64]),  # the leading block [12, 28, 64] in general
    ],
    ids=["grown_columns", "pruned_columns", "leading_block"],
)
def test_a_changed_inner_dimension_aligns_the_common_block(
    tmp_path: Path, old_shape: list[int], new_shape: list[int]
) -> None:
    old, new, _ = _reshaped(tmp_path, old_shape, new_shape)
    size, chunks = _round_trip(old, new, tmp_path)
    common = [min(a, b) for a, b in zip(old_shape, new_shape, strict=True)]
    base, run_old = (
        _offset_of(old),
        4 * old_shape[-1] * (old_shape[-2] if len(old_shape) > 2 else 1),
    )
    lane_coded = {src for src, codec in chunks if codec in (Codec.FLOAT, Codec.FLOAT_BZ2)}
    starts = {base + i * run_old for i in range(common[0])}
    assert starts <= lane_coded  # every common run starts an aligned lane-delta chunk
    # the common elements cost what drift costs (~45 %), the new ones what random floats cost
    new_elements = 1 - math.prod(common) / math.prod(new_shape)
    assert size < (0.55 * (1 - new_elements) + 0.95 * new_elements) * new.stat().st_size


def test_aligning_the_common_block_beats_the_proportional_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new, _ = _reshaped(tmp_path, [48, 1_200], [48, 1_300])
    aligned, _ = _round_trip(old, new, tmp_path)
    monkeypatch.setattr(_plan, "MIN_RUN", 1 << 30)  # what the encoder did before
    (tmp_path / "window").mkdir()
    window, _ = _round_trip(old, new, tmp_path / "window")
    assert aligned < 0.75 * window


def test_runs_too_short_for_a_chunk_fall_back_to_the_proportional_window(tmp_path: Path) -> None:
    """[1000, 64] → [1000, 65]: 256-byte rows would cost a record each; the window is used."""
    old, new, _ = _reshaped(tmp_path, [1_000, 64], [1_000, 65])
    _, chunks = _round_trip(old, new, tmp_path)
    assert len(chunks) < 10


def _t(
    shape: tuple[int, ...], width: int = 4, offset: int = 1_000, is_float: bool = True
) -> Tensor:
    return Tensor("w", width, is_float, offset, width * math.prod(shape), shape)


def test_common_runs_of_grown_columns() -> None:
    runs = common_runs(_t((3, 2_000)), _t((3, 1_500), offset=50))
    assert runs == [(0, 50, 6_000), (8_000, 6_050, 6_000), (16_000, 12_050, 6_000)]


def test_common_runs_of_the_leading_block() -> None:
    runs = common_runs(_t((2, 3, 1_024)), _t((4, 2, 1_024), offset=0))
    row = 4 * 1_024
    assert runs == [(0, 0, 2 * row), (3 * row, 2 * row, 2 * row)]


@pytest.mark.parametrize(
    ("new", "old"),
    [
        (_t((3, 2_000)), _t((3, 1_500), width=2)),  # another element width
        (_t((3, 2_000)), _t((3, 1_500), is_float=False)),  # float became integer
        (_t((3, 2_000)), _t((5_000,))),  # another rank
        (_t((3, 2_000)), Tensor("w", 4, True, 0, 4 * 4_500, ())),  # unknown old shape
        (_t((1 << 20, 1_024)), _t((1 << 20, 1_000))),  # a million runs: too many chunks
        (_t((1 << 16, 8)), _t((1 << 16, 9))),  # 32-byte runs: too short
    ],
    ids=["width", "dtype", "rank", "unknown", "huge_count", "short_runs"],
)
def test_no_common_runs_where_they_would_be_wrong_or_too_many(new: Tensor, old: Tensor) -> None:
    assert common_runs(new, old) == []


def test_a_tensor_of_the_same_length_is_one_run_whatever_its_shape() -> None:
    assert common_runs(_t((4, 1_000)), _t((1_000, 4), offset=8)) == [(0, 8, 16_000)]


@pytest.mark.parametrize(
    "shape",
    [None, [], "3,4", [3, "4"], [3, -4], [3, True], [2, 4], [3, 0], {"rows": 3}, [1] * 9 + [12]],
)
def test_a_malformed_or_inconsistent_shape_gives_no_row_alignment(shape: object) -> None:
    assert row_bytes(shape, 4, 48) == 0
    assert checked_shape(shape, 4, 48) == ()


def test_a_consistent_shape_gives_the_row_size() -> None:
    assert row_bytes([3, 4], 4, 48) == 16
    assert row_bytes([12], 4, 48) == 4


def test_inconsistent_safetensors_shape_still_reads_the_layout(tmp_path: Path) -> None:
    rng = random.Random(5)
    path = write_safetensors(tmp_path / "m", {"w": ("F32", f32(floats(rng, 100)))}, {"w": [7, 7]})
    with open(path, "rb") as handle:
        layout = read_layout(handle.fileno(), os.path.getsize(path))
    assert layout is not None and layout[0].row == 0
