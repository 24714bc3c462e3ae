"""Edge formats are aligned by tensor; forged or damaged files fall back to the byte path.

Each format's layout must name the same tensor the same way in two versions and
give its exact bytes; a delta between fine-tuned versions is then lane-coded per
tensor. A file whose header is truncated, whose offsets run past the end or
overlap, or whose declared counts are huge has no layout (``read_layout`` is
None, in bounded memory) and still gets a correct delta from the byte-level path.
"""

from __future__ import annotations

import hashlib
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ferry.protocol.delta import Codec, apply_delta_file
from ferry.protocol.delta.encode import build_delta
from ferry.protocol.delta.encode._layout import format_of, read_layout, sidecar
from tests.deltas.formats import (
    Weights,
    fine_tuned,
    weights,
    write_gguf,
    write_openvino,
    write_tflite,
    write_torch_zip,
)
from tests.deltas.models import SMALL, split_delta

Writer = Callable[[Path, Weights], Path]
FORMATS: dict[str, tuple[str, Writer]] = {
    "pytorch-zip": ("model.pt", write_torch_zip),
    "gguf": ("model.gguf", write_gguf),
    "tflite": ("model.tflite", write_tflite),
    "openvino": ("model", write_openvino),
}


def _write(tmp_path: Path, fmt: str, tag: str, tensors: Weights) -> Path:
    name, writer = FORMATS[fmt]
    folder = tmp_path / tag
    folder.mkdir(exist_ok=True)
    return writer(folder / name, tensors)


def _layout(path: Path) -> tuple[str, list[tuple[str, int, int]] | None]:
    with open(path, "rb") as handle:
        size = path.stat().st_size
        layout = read_layout(handle.fileno(), size, sidecar(path))
        fmt = format_of(handle.fileno(), size, sidecar(path))
    return fmt, None if layout is None else [(t.name, t.offset, t.length) for t in layout]


def _round_trip(old: Path, new: Path, tmp_path: Path) -> list[tuple[int, Codec]]:
    result = build_delta(old, new, tmp_path / "delta", SMALL)
    data = new.read_bytes()
    out = tmp_path / "out"
    apply_delta_file(old, result.path, out, len(data), hashlib.sha256(data).hexdigest())
    assert out.read_bytes() == data
    _, chunks = split_delta(result.path.read_bytes())
    return [(record.out_offset, record.codec) for record, _ in chunks]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_layout_gives_every_tensor_its_exact_bytes(fmt: str, tmp_path: Path) -> None:
    tensors = weights()
    path = _write(tmp_path, fmt, "v1", tensors)
    found, layout = _layout(path)
    assert found == fmt and layout is not None
    data = path.read_bytes()
    payloads = {value.tobytes() for value in tensors.values()}
    assert {data[offset : offset + length] for _, offset, length in layout} == payloads


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_fine_tune_is_lane_coded_tensor_by_tensor(fmt: str, tmp_path: Path) -> None:
    tensors = weights()
    old = _write(tmp_path, fmt, "v1", tensors)
    new = _write(tmp_path, fmt, "v2", fine_tuned(tensors, seed=2))
    _, layout = _layout(new)
    assert layout is not None
    coded = dict(_round_trip(old, new, tmp_path))
    for name, offset, length in layout:
        if length >= 4096:  # small tensors are grouped with their neighbours
            assert coded[offset] in (Codec.FLOAT, Codec.SPARSE, Codec.FLOAT_BZ2), name


def test_pytorch_zip_storages_stay_aligned_when_the_pickle_grows(tmp_path: Path) -> None:
    """A longer pickle shifts every storage: they still pair by storage key."""
    tensors = weights()
    old = write_torch_zip(tmp_path / "old.pt", tensors)
    new = write_torch_zip(tmp_path / "new.pt", fine_tuned(tensors, 3), extra_meta="x" * 333)
    assert _layout(old)[1] != _layout(new)[1]
    codecs = [codec for _, codec in _round_trip(old, new, tmp_path)]
    assert codecs.count(Codec.FLOAT) + codecs.count(Codec.SPARSE) >= 4


def test_pytorch_zip_storage_dtypes_come_from_the_pickle(tmp_path: Path) -> None:
    path = write_torch_zip(tmp_path / "m.pt", weights())
    with open(path, "rb") as handle:
        layout = read_layout(handle.fileno(), path.stat().st_size)
    assert layout is not None
    assert [t.width for t in layout] == [4, 4, 4, 1]  # three float32, one int8


def test_openvino_constants_reordered_in_the_bin_still_pair_by_name(tmp_path: Path) -> None:
    tensors = weights()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    old = write_openvino(tmp_path / "a" / "m", tensors)
    new = write_openvino(
        tmp_path / "b" / "m", fine_tuned(tensors, 4), order=list(reversed(tensors))
    )
    codecs = [codec for _, codec in _round_trip(old, new, tmp_path)]
    assert Codec.ZSTD not in codecs


# --- damaged and forged files ---------------------------------------------------------------


def _patched(path: Path, at: int, value: bytes) -> Path:
    data = bytearray(path.read_bytes())
    data[at : at + len(value)] = value
    path.write_bytes(bytes(data))
    return path


def _gguf_info(data: bytes, name: bytes) -> int:
    """Position of a tensor info's offset field (after its name, rank, dims and type)."""
    at = data.find(name) + len(name)
    (rank,) = struct.unpack("<I", data[at : at + 4])
    return at + 4 + 8 * rank + 4


def _truncate(path: Path, size: int) -> Path:
    path.write_bytes(path.read_bytes()[:size])
    return path


def _gguf_attack(kind: str, path: Path) -> Path:
    data = path.read_bytes()
    if kind == "truncated header":
        return _truncate(path, data.find(b"dense.weight"))
    if kind == "huge tensor count":
        return _patched(path, 8, struct.pack("<Q", 1 << 62))
    if kind == "huge string length":
        return _patched(path, 24, struct.pack("<Q", 1 << 40))
    if kind == "offset past the end":
        return _patched(path, _gguf_info(data, b"dense.bias"), struct.pack("<Q", 1 << 30))
    (embed,) = struct.unpack("<Q", data[_gguf_info(data, b"embed.weight") :][:8])
    return _patched(path, _gguf_info(data, b"dense.weight"), struct.pack("<Q", embed + 64))


def _zip_attack(kind: str, path: Path) -> Path:
    data = path.read_bytes()
    eocd = data.rfind(b"PK\x05\x06")
    if kind == "truncated header":
        return _truncate(path, eocd - 10)
    if kind == "huge tensor count":
        return _patched(path, eocd + 8, struct.pack("<HHI", 0xFFFF, 0xFFFF, 0xFFFFFFF0))
    if kind == "huge string length":
        central = data.find(b"PK\x01\x02")
        return _patched(path, central + 28, struct.pack("<H", 0xFFFF))
    if kind == "offset past the end":
        central = data.find(b"PK\x01\x02", data.find(b"PK\x01\x02") + 1)
        return _patched(path, central + 42, struct.pack("<I", len(data) - 10))
    central = data.find(b"PK\x01\x02", data.find(b"PK\x01\x02") + 1)  # data/0's entry
    return _patched(path, central + 20, struct.pack("<I", 1 << 20))  # runs into data/1


def _tflite_attack(kind: str, path: Path) -> Path:
    data = path.read_bytes()
    _, layout = _layout(path)
    assert layout is not None
    embed = max(layout, key=lambda t: t[2])[1]  # the biggest buffer's data
    if kind == "truncated header":
        return _truncate(path, 6)
    if kind in ("huge tensor count", "huge string length"):
        return _patched(path, embed - 4, struct.pack("<I", 0xFFFFFFF0))
    if kind == "offset past the end":
        return _patched(path, 0, struct.pack("<I", len(data) + 100))
    first = min(layout, key=lambda t: t[1])  # lengthen the first buffer into the next
    return _patched(path, first[1] - 4, struct.pack("<I", first[2] + 1000))


def _openvino_attack(kind: str, path: Path) -> Path:
    xml = path.with_suffix(".xml")
    text = xml.read_text()
    if kind == "truncated header":
        xml.write_text(text[: len(text) // 2])
    elif kind == "huge tensor count":  # for XML: a declared entity expansion
        bomb = '<!DOCTYPE n [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
        xml.write_text(text.replace('<net name="m"', bomb + '<net name="m"'))
    elif kind == "huge string length":
        xml.write_text(text.replace('size="256"', 'size="99999999999999999999"'))
    elif kind == "offset past the end":
        xml.write_text(text.replace('offset="0"', 'offset="10000000"'))
    else:
        xml.write_text(text.replace('offset="131072"', 'offset="64"'))
    return path


ATTACKS = ["truncated header", "huge tensor count", "huge string length",
           "offset past the end", "overlapping tensors"]  # fmt: skip
FORGERS = {"gguf": _gguf_attack, "pytorch-zip": _zip_attack, "tflite": _tflite_attack,
           "openvino": _openvino_attack}  # fmt: skip


@pytest.mark.parametrize("kind", ATTACKS)
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_damaged_file_has_no_layout_and_still_gets_a_correct_delta(
    fmt: str, kind: str, tmp_path: Path
) -> None:
    tensors = weights()
    old = _write(tmp_path, fmt, "v1", tensors)
    new = FORGERS[fmt](kind, _write(tmp_path, fmt, "v2", fine_tuned(tensors, 5)))
    tracemalloc.start()
    try:
        found, layout = _layout(new)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (found, layout) == ("bytes", None)
    assert peak < 4 << 20  # nothing was allocated for the declared sizes
    _round_trip(old, new, tmp_path)


def test_int8_weights_are_not_lane_coded_as_float(tmp_path: Path) -> None:
    """The parsers report element widths: int8 chunks use width-1 lanes."""
    tensors = {"q": np.arange(-128, 128, dtype=np.int8).repeat(64).reshape(256, 64)}
    old = write_gguf(tmp_path / "old.gguf", tensors)
    new = write_gguf(tmp_path / "new.gguf", fine_tuned(tensors, 6))
    with open(new, "rb") as handle:
        layout = read_layout(handle.fileno(), new.stat().st_size)
    assert layout is not None and layout[0].width == 1 and not layout[0].is_float
    _round_trip(old, new, tmp_path)


def test_gguf_with_a_long_metadata_value_keeps_its_layout(tmp_path: Path) -> None:
    """Values are skipped, not read: a 2 MB chat template is no reason to give up the layout."""
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_string("tokenizer.chat_template", "{{ x }}" * 300_000)
    writer.add_tensor("w", weights()["dense.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    found, layout = _layout(tmp_path / "m.gguf")
    assert found == "gguf" and layout is not None and layout[0][0] == "w"


def test_openvino_bin_without_its_xml_takes_the_byte_path(tmp_path: Path) -> None:
    """Content-addressed blobs have no sibling .xml: the .bin is coded by bytes, correctly."""
    tensors = weights()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    old = write_openvino(tmp_path / "a" / "m", tensors)
    new = write_openvino(tmp_path / "b" / "m", fine_tuned(tensors, 7))
    new.with_suffix(".xml").unlink()
    assert _layout(new) == ("bytes", None)
    _round_trip(old, new, tmp_path)


@pytest.mark.parametrize("fmt", ["gguf", "openvino", "tflite"])
def test_layout_gives_the_row_major_shape(fmt: str, tmp_path: Path) -> None:
    """Shapes as numpy orders them (GGUF stores them innermost first): what the planner
    needs to line up the common block of a reshaped tensor."""
    tensors = {"w": np.arange(6 * 40, dtype=np.float32).reshape(6, 40)}
    path = _write(tmp_path, fmt, "v1", tensors)
    with open(path, "rb") as handle:
        layout = read_layout(handle.fileno(), path.stat().st_size, sidecar(path))
    assert layout is not None
    assert [t.shape for t in layout if t.length == 6 * 40 * 4] == [(6, 40)]
