"""Small synthetic model files for delta tests: a hand-built safetensors writer, seeded drift."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

from ferry.protocol.canonical import canonical_json
from ferry.protocol.delta import MAGIC, ChunkRecord
from ferry.protocol.delta._format import RECORD
from ferry.server.deltas import EncodeOptions

Tensors = dict[str, tuple[str, bytes]]  # name → (safetensors dtype, little-endian bytes)
WIDTH = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4, "F64": 8}
# Small chunks keep the tests fast while still cutting tensors into several chunks.
SMALL = EncodeOptions(chunk_size=64 << 10, workers=1)


def write_safetensors(
    path: Path, tensors: Tensors, shapes: dict[str, list[int]] | None = None
) -> Path:
    """8-byte little-endian header length, JSON header, then the tensors in dict order.

    Shapes default to one dimension of the tensor's element count."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, data) in tensors.items():
        count = len(data) // WIDTH[dtype]
        header[name] = {
            "dtype": dtype,
            "shape": (shapes or {}).get(name, [count]),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(d for _, d in tensors.values()))
    return path


def floats(rng: random.Random, count: int, scale: float = 0.05) -> list[float]:
    return [rng.gauss(0.0, scale) for _ in range(count)]


def f32(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def drift(values: list[float], rng: random.Random, amount: float = 1e-3) -> list[float]:
    """What a few fine-tuning steps do: every value moves a little."""
    return [v * (1.0 + rng.gauss(0.0, amount)) for v in values]


def split_delta(raw: bytes) -> tuple[bytes, list[tuple[ChunkRecord, bytes]]]:
    """Take a Ferry delta apart: (magic + header, [(record, payload)]) — to forge attacks."""
    (header_len,) = struct.unpack(">I", raw[8:12])
    head, position = raw[: 12 + header_len], 12 + header_len
    chunks = []
    while position < len(raw):
        record = ChunkRecord.parse(raw[position : position + RECORD.size])
        position += RECORD.size
        chunks.append((record, raw[position : position + record.payload_len]))
        position += record.payload_len
    return head, chunks


def join_delta(head: bytes, chunks: list[tuple[ChunkRecord, bytes]]) -> bytes:
    return head + b"".join(record.to_bytes() + payload for record, payload in chunks)


def header_of(raw: bytes) -> dict[str, object]:
    (header_len,) = struct.unpack(">I", raw[8:12])
    return json.loads(raw[12 : 12 + header_len])


def with_header(raw: bytes, **changes: object) -> bytes:
    """The same delta with header fields replaced (re-encoded canonically)."""
    _, chunks = split_delta(raw)
    fields = {**header_of(raw), **changes}
    body = canonical_json(fields)
    return join_delta(MAGIC + struct.pack(">I", len(body)) + body, chunks)


def make_pair(
    directory: Path, *, reorder: bool = False, add: bool = False, seed: int = 8
) -> tuple[Path, Path]:
    """(old, new) safetensors: three drifted float layers (one frozen) and an int8 tensor."""
    rng = random.Random(seed)
    weights = {f"layer{i}.weight": floats(rng, 40_000) for i in range(3)}
    q_old = rng.randbytes(30_000)
    old: Tensors = {name: ("F32", f32(v)) for name, v in weights.items()}
    old["head.q"] = ("I8", q_old)
    new: Tensors = {name: ("F32", f32(drift(v, rng))) for name, v in weights.items()}
    new["layer1.weight"] = old["layer1.weight"]  # a frozen layer: identical bytes
    new["head.q"] = ("I8", bytes((b + rng.choice((-1, 0, 1))) % 256 for b in q_old))
    if add:
        new["extra.bias"] = ("F32", f32(floats(rng, 5_000)))
    if reorder:
        new = dict(reversed(list(new.items())))
    return (
        write_safetensors(directory / "old.safetensors", old),
        write_safetensors(directory / "new.safetensors", new),
    )


def vocabulary_pair(
    directory: Path, rows: tuple[int, int] = (3_000, 3_100), dim: int = 64, seed: int = 11
) -> tuple[Path, Path]:
    """A vocabulary extension plus a small fine-tune: the embedding grows by 100 rows
    (appended), every old weight drifts a little, and a dense layer keeps its shape."""
    rng = random.Random(seed)
    embedding = floats(rng, rows[0] * dim)
    dense = floats(rng, 128 * dim)
    grown = drift(embedding, rng) + floats(rng, (rows[1] - rows[0]) * dim)
    old = write_safetensors(
        directory / "old.safetensors",
        {"embeddings.weight": ("F32", f32(embedding)), "dense.weight": ("F32", f32(dense))},
        {"embeddings.weight": [rows[0], dim], "dense.weight": [128, dim]},
    )
    new = write_safetensors(
        directory / "new.safetensors",
        {"embeddings.weight": ("F32", f32(grown)), "dense.weight": ("F32", f32(drift(dense, rng)))},
        {"embeddings.weight": [rows[1], dim], "dense.weight": [128, dim]},
    )
    return old, new
