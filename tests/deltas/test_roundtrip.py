"""Deltas rebuild the exact new artifact, choose the right codec per chunk, and stay small."""

from __future__ import annotations

import hashlib
import os
import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from ferry.protocol.delta import Codec, Op, apply_delta_file
from ferry.protocol.delta.encode._layout import read_layout
from ferry.server.deltas import DeltaResult, EncodeOptions, build_compressed, build_delta
from tests.deltas.models import SMALL, f32, floats, split_delta, write_safetensors

Pair = Callable[..., tuple[Path, Path]]


def _apply(old: Path | None, delta: Path, new: Path, out: Path) -> None:
    data = new.read_bytes()
    apply_delta_file(old, delta, out, len(data), hashlib.sha256(data).hexdigest())
    assert out.read_bytes() == data


def _round_trip(
    old: Path, new: Path, tmp_path: Path, options: EncodeOptions = SMALL
) -> DeltaResult:
    result = build_delta(old, new, tmp_path / "delta", options)
    _apply(old, result.path, new, tmp_path / "out")
    return result


def test_fine_tune_delta_is_float_coded_and_beats_plain_compression(
    model_pair: Pair, tmp_path: Path, lanes: str
) -> None:
    old, new = model_pair()
    result = _round_trip(old, new, tmp_path)
    assert result.chunks.get("float", 0) > 0
    plain = len(zstandard.ZstdCompressor(level=19).compress(new.read_bytes()))
    assert result.size < 0.8 * plain


def test_frozen_layer_is_sent_as_copies(model_pair: Pair, tmp_path: Path) -> None:
    old, new = model_pair()
    result = _round_trip(old, new, tmp_path)
    assert result.chunks.get("copy", 0) >= 3  # layer1 (160 kB) in 64 kB chunks
    assert result.payload_bytes.get("copy", 0) == 0


def test_moved_and_added_tensors_still_diff_against_themselves(
    model_pair: Pair, tmp_path: Path, lanes: str
) -> None:
    same_order = _round_trip(*model_pair(), tmp_path)
    moved = _round_trip(*model_pair(reorder=True, add=True), tmp_path)
    added = 20_000 * 0.95  # the new tensor's random floats barely compress
    assert moved.size <= same_order.size * 1.05 + added
    assert moved.chunks.get("copy", 0) >= 3  # the frozen layer, found at its new offset


def test_int8_tensor_uses_lane_subtraction(model_pair: Pair, tmp_path: Path, lanes: str) -> None:
    old, new = model_pair()
    result = _round_trip(old, new, tmp_path)
    _, chunks = split_delta(result.path.read_bytes())
    int8 = [r for r, _ in chunks if r.codec is Codec.FLOAT and r.width == 1]
    assert int8
    assert all(r.op in (Op.SUB, Op.SUBZZ) for r in int8)


def test_unknown_format_with_an_insertion_uses_byte_matching(tmp_path: Path) -> None:
    rng = random.Random(3)
    old = tmp_path / "old.bin"
    new = tmp_path / "new.bin"
    body = rng.randbytes(300_000)
    old.write_bytes(body)
    new.write_bytes(body[:1000] + b"inserted!" * 11 + body[1000:])
    result = _round_trip(old, new, tmp_path)
    assert result.size < 0.05 * new.stat().st_size
    assert {"bsdiff", "zstd_ref"} & set(result.chunks)


def test_tensor_that_changed_shape_diffs_against_its_old_bytes(tmp_path: Path) -> None:
    rng = random.Random(4)
    vocab = floats(rng, 30_000)
    old = write_safetensors(tmp_path / "old.safetensors", {"emb": ("F32", f32(vocab))})
    grown = vocab + floats(rng, 500)  # rows appended: lengths differ, no lane alignment
    new = write_safetensors(tmp_path / "new.safetensors", {"emb": ("F32", f32(grown))})
    result = _round_trip(old, new, tmp_path)
    assert result.size < 0.2 * new.stat().st_size


def test_compressed_full_artifact_beats_plain_zstd_on_floats(
    model_pair: Pair, tmp_path: Path
) -> None:
    _, new = model_pair()
    result = build_compressed(new, tmp_path / "full", SMALL)
    assert result.base_sha256 is None
    _apply(None, result.path, new, tmp_path / "out")
    plain = len(zstandard.ZstdCompressor(level=3).compress(new.read_bytes()))
    assert result.size < plain


def test_empty_artifact_round_trips(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(b"something")
    new.write_bytes(b"")
    _round_trip(old, new, tmp_path)


def test_parallel_build_writes_the_same_bytes(model_pair: Pair, tmp_path: Path) -> None:
    old, new = model_pair(reorder=True)
    one = build_delta(old, new, tmp_path / "one", SMALL)
    two = build_delta(
        old, new, tmp_path / "two", EncodeOptions(chunk_size=SMALL.chunk_size, workers=2)
    )
    assert one.sha256 == two.sha256


def test_apply_accepts_a_stream_and_an_iterator_of_pieces(model_pair: Pair, tmp_path: Path) -> None:
    old, new = model_pair()
    delta = build_delta(old, new, tmp_path / "delta", SMALL)
    data = new.read_bytes()
    raw = delta.path.read_bytes()
    pieces = (raw[i : i + 1000] for i in range(0, len(raw), 1000))
    apply_delta_file(old, pieces, tmp_path / "a", len(data), delta.target_sha256)
    with open(delta.path, "rb") as stream:
        apply_delta_file(
            old, stream, tmp_path / "b", len(data), delta.target_sha256,
            delta_size=delta.size, delta_sha256=delta.sha256,
        )  # fmt: skip
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes() == data


def test_apply_memory_is_bounded_by_the_chunk_size_not_the_model(
    tmp_path: Path, lanes: str
) -> None:
    rng = random.Random(5)
    chunk = 32 << 10
    old_values = floats(rng, 400_000)  # 1.6 MB model, 49 chunks
    old = write_safetensors(tmp_path / "old.safetensors", {"w": ("F32", f32(old_values))})
    new = write_safetensors(
        tmp_path / "new.safetensors",
        {"w": ("F32", f32([v + rng.gauss(0, 1e-4) for v in old_values]))},
    )
    delta = build_delta(old, new, tmp_path / "delta", EncodeOptions(chunk_size=chunk, workers=1))
    tracemalloc.start()
    try:
        apply_delta_file(old, delta.path, tmp_path / "out", delta.target_size, delta.target_sha256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * chunk  # 512 kB, against a 1.6 MB artifact


def test_safetensors_layout_finds_every_tensor(model_pair: Pair) -> None:
    _, new = model_pair(add=True)
    with open(new, "rb") as handle:
        layout = read_layout(handle.fileno(), new.stat().st_size)
    assert layout is not None
    assert sorted(t.name for t in layout) == sorted(
        ["layer0.weight", "layer1.weight", "layer2.weight", "head.q", "extra.bias"]
    )


def test_onnx_initializers_are_located_by_name(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    numpy = pytest.importorskip("numpy")
    from onnx import TensorProto, helper, numpy_helper

    def model(weights: dict[str, object], path: Path) -> Path:
        inits = [numpy_helper.from_array(value, name) for name, value in weights.items()]
        node = helper.make_node("MatMul", ["x", "w1"], ["y"])
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits,
        )  # fmt: skip
        onnx.save(helper.make_model(graph), str(path))
        return path

    gen = numpy.random.default_rng(0)
    w = {
        "w1": gen.standard_normal((64, 64)).astype("float32"),
        "w2": gen.standard_normal(4096).astype("float32"),
    }
    old = model(w, tmp_path / "old.onnx")
    moved = {"w2": w["w2"] * 1.001, "w1": w["w1"] * 1.001}
    new = model({k: v.astype("float32") for k, v in moved.items()}, tmp_path / "new.onnx")
    with open(new, "rb") as handle:
        layout = read_layout(handle.fileno(), new.stat().st_size)
    assert layout is not None
    raw = new.read_bytes()
    for tensor in layout:
        assert (
            raw[tensor.offset : tensor.offset + tensor.length]
            == moved[tensor.name].astype("float32").tobytes()
        )
    result = _round_trip(old, new, tmp_path)
    assert result.chunks.get("float", 0) == 2


def test_in_process_builds_leave_no_file_open(model_pair: Pair, tmp_path: Path) -> None:
    old, new = model_pair()
    before = len(os.listdir("/proc/self/fd"))
    for name in ("one", "two"):
        build_delta(old, new, tmp_path / name, SMALL)
    assert len(os.listdir("/proc/self/fd")) == before


def test_sparse_int8_change_is_coded_as_sparse_symbols(tmp_path: Path) -> None:
    """Re-quantising after a fine-tune flips few int8 values: (skip, value) symbols win."""
    rng = random.Random(6)
    q_old = rng.randbytes(200_000)
    q_new = bytearray(q_old)
    for index in rng.sample(range(len(q_new)), 2_000):
        q_new[index] = (q_new[index] + rng.choice((-1, 1))) % 256
    old = write_safetensors(tmp_path / "old.safetensors", {"q": ("I8", q_old)})
    new = write_safetensors(tmp_path / "new.safetensors", {"q": ("I8", bytes(q_new))})
    result = _round_trip(old, new, tmp_path)
    assert result.chunks.get("sparse", 0) > 0


def test_small_adjacent_tensors_share_a_chunk(tmp_path: Path) -> None:
    rng = random.Random(7)
    biases = {f"layer{i}.bias": floats(rng, 256) for i in range(40)}
    old = write_safetensors(
        tmp_path / "old.safetensors", {n: ("F32", f32(v)) for n, v in biases.items()}
    )
    new = write_safetensors(
        tmp_path / "new.safetensors",
        {n: ("F32", f32([x + 1e-4 for x in v])) for n, v in biases.items()},
    )
    result = _round_trip(old, new, tmp_path)
    assert sum(result.chunks.values()) <= 3  # header + one run of 40 biases (40 kB)
