"""Seeded synthetic model pairs, written tensor by tensor (memory stays at one tensor).

A transformer-shaped float32 safetensors file: token embeddings, then per layer
q/k/v/o projections, a 4x MLP and layer norms, all N(0, 0.02) like a fresh
BERT. Pair kinds:

    drift      every weight moved by N(0, 3e-5): what 5 AdamW steps at lr 1e-5 do
    scratch    retrained from scratch: same shapes, unrelated values
    reordered  tensors shuffled, a third of them drifted, two new tensors added
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

Shape = tuple[int, ...]
Maker = Callable[[], np.ndarray]


def shapes(total_bytes: int) -> list[tuple[str, Shape]]:
    """Tensor names and shapes adding up to about ``total_bytes`` of float32."""
    mb = total_bytes >> 20
    d = 128 if mb < 5 else 256 if mb < 20 else 512 if mb < 200 else 1024
    vocab = {128: 2048, 256: 4096, 512: 8192, 1024: 32000}[d]
    per_layer = 12 * d * d * 4
    layers = max(1, round((total_bytes - vocab * d * 4) / per_layer))
    out: list[tuple[str, Shape]] = [("embed_tokens.weight", (vocab, d))]
    for i in range(layers):
        p = f"layers.{i}."
        out += [(p + f"attn.{n}_proj.weight", (d, d)) for n in "qkvo"]
        out += [(p + "mlp.up_proj.weight", (4 * d, d)), (p + "mlp.down_proj.weight", (d, 4 * d))]
        out += [(p + "norm1.weight", (d,)), (p + "norm2.weight", (d,))]
    return out


def _tensor(seed: int, index: int, shape: Shape) -> np.ndarray:
    rng = np.random.default_rng([seed, index])
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)).astype(np.float32)


def _drifted(base: np.ndarray, seed: int, index: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 10_000 + index])
    return (base + rng.standard_normal(base.shape, dtype=np.float32) * np.float32(3e-5)).astype(
        np.float32
    )


def write(path: Path, tensors: list[tuple[str, Shape, Maker]]) -> Path:
    """safetensors: 8-byte header length, JSON header, then each tensor as it is made."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in tensors:
        size = int(np.prod(shape)) * 4
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for _, _, make in tensors:
            handle.write(make().tobytes())
    return path


def make_pair(kind: str, total_bytes: int, directory: Path, seed: int = 1) -> tuple[Path, Path]:
    """Write (old, new) for one pair kind; reused if already there."""
    old, new = directory / f"{kind}-old.safetensors", directory / f"{kind}-new.safetensors"
    if old.exists() and new.exists():
        return old, new
    directory.mkdir(parents=True, exist_ok=True)
    layout = shapes(total_bytes)
    write(old, [(n, s, _maker(seed, i, s)) for i, (n, s) in enumerate(layout)])
    write(new, list(_new_tensors(kind, layout, seed)))
    return old, new


def _maker(seed: int, index: int, shape: Shape) -> Maker:
    return lambda: _tensor(seed, index, shape)


def _drift_maker(seed: int, index: int, shape: Shape) -> Maker:
    return lambda: _drifted(_tensor(seed, index, shape), seed, index)


def _new_tensors(
    kind: str, layout: list[tuple[str, Shape]], seed: int
) -> Iterator[tuple[str, Shape, Maker]]:
    if kind == "drift":
        yield from ((n, s, _drift_maker(seed, i, s)) for i, (n, s) in enumerate(layout))
    elif kind == "scratch":
        yield from ((n, s, _maker(seed + 1, i, s)) for i, (n, s) in enumerate(layout))
    elif kind == "reordered":
        order = np.random.default_rng(seed).permutation(len(layout))
        items = [(n, s, _drift_maker(seed, i, s) if i % 3 == 0 else _maker(seed, i, s))
                 for i, (n, s) in ((int(j), layout[int(j)]) for j in order)]  # fmt: skip
        d = layout[1][1][0]
        items.insert(
            len(items) // 2, ("adapter.up.weight", (4 * d, d), _maker(seed + 2, 0, (4 * d, d)))
        )
        items.insert(len(items) // 3, ("adapter.norm.weight", (d,), _maker(seed + 2, 1, (d,))))
        yield from items
    else:
        raise ValueError(f"unknown pair kind {kind!r}")
