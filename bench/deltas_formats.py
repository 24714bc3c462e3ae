"""Model pairs for the formats of issue 18: a shape change, PyTorch zip, GGUF, TFLite,
OpenVINO IR and a container Ferry does not parse. Each pair is an old version and a
fine-tuned new one; written with the writers the delta tests use (tests/deltas/formats.py:
the ``gguf`` and ``flatbuffers`` packages or by hand), never downloaded.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# the repository root is on the path now
from tests.deltas.formats import (
    Weights,
    fine_tuned,
    write_gguf,
    write_openvino,
    write_tflite,
    write_torch_zip,
)
from tests.deltas.models import write_safetensors

DIM = 256


def weights(total_bytes: int, seed: int = 1) -> Weights:
    """An embedding (most of the bytes), two dense layers, a bias and an int8 tensor."""
    rng = np.random.default_rng(seed)
    rows = max(total_bytes * 3 // 4 // (4 * DIM), 64)
    return {
        "embed.weight": rng.normal(0, 0.05, (rows, DIM)).astype(np.float32),
        "dense1.weight": rng.normal(0, 0.05, (DIM, DIM)).astype(np.float32),
        "dense2.weight": rng.normal(0, 0.05, (DIM, DIM)).astype(np.float32),
        "dense1.bias": rng.normal(0, 0.05, (DIM,)).astype(np.float32),
        "q.weight": rng.integers(-128, 128, (max(total_bytes // 8 // DIM, 16), DIM), np.int8),
    }


def _formats(directory: Path, total: int) -> dict[str, tuple[Path, Path]]:
    old = weights(total)
    new = fine_tuned(old, seed=2)
    out: dict[str, tuple[Path, Path]] = {}
    writers: dict[str, tuple[str, Callable[..., Path]]] = {
        "PyTorch zip": ("model.pt", write_torch_zip), "GGUF": ("model.gguf", write_gguf),
        "TFLite": ("model.tflite", write_tflite), "OpenVINO IR": ("model", write_openvino),
    }  # fmt: skip
    for name, (file, writer) in writers.items():
        folder = directory / name.replace(" ", "-")
        (folder / "old").mkdir(parents=True, exist_ok=True)
        (folder / "new").mkdir(parents=True, exist_ok=True)
        extra = {"extra_meta": "fine-tuned " * 20} if writer is write_torch_zip else {}
        out[name] = (
            writer(folder / "old" / file, old),
            writer(folder / "new" / file, new, **extra),
        )
    return out


def _shape_change(directory: Path, total: int) -> tuple[Path, Path]:
    """Vocabulary extension: the embedding grows by 1,000/30,522 of its rows, plus a fine-tune."""
    old = weights(total)
    new = fine_tuned(old, seed=3)
    rows = old["embed.weight"].shape[0]
    added = np.random.default_rng(4).normal(0, 0.05, (max(rows * 1000 // 30522, 1), DIM))
    new["embed.weight"] = np.concatenate([new["embed.weight"], added.astype(np.float32)])
    paths = []
    for tag, tensors in (("old", old), ("new", new)):
        paths.append(write_safetensors(
            directory / f"shape-{tag}.safetensors",
            {k: ("I8" if v.dtype == np.int8 else "F32", v.tobytes()) for k, v in tensors.items()},
            {k: list(v.shape) for k, v in tensors.items()},
        ))  # fmt: skip
    return paths[0], paths[1]


def _columns_change(directory: Path, total: int) -> tuple[Path, Path]:
    """An output projection [DIM, vocab] that gains 1,000/30,522 of its columns (as
    [768, 30522] → [768, 31522]), plus a fine-tune: the common block is DIM runs."""
    old = weights(total)
    new = fine_tuned(old, seed=3)
    old["embed.weight"] = np.ascontiguousarray(old["embed.weight"].T)
    grown = new["embed.weight"].T
    added = np.random.default_rng(4).normal(0, 0.05, (DIM, max(grown.shape[1] * 1000 // 30522, 1)))
    new["embed.weight"] = np.ascontiguousarray(
        np.concatenate([grown, added.astype(np.float32)], axis=1)
    )
    paths = []
    for tag, tensors in (("old", old), ("new", new)):
        paths.append(write_safetensors(
            directory / f"columns-{tag}.safetensors",
            {k: ("I8" if v.dtype == np.int8 else "F32", v.tobytes()) for k, v in tensors.items()},
            {k: list(v.shape) for k, v in tensors.items()},
        ))  # fmt: skip
    return paths[0], paths[1]


def _unknown(directory: Path, total: int) -> tuple[Path, Path]:
    """A container Ferry does not parse: a grown header, payloads reordered, 2 % of bytes ±1."""
    rng = random.Random(5)
    blobs = [rng.randbytes(total // 4) for _ in range(4)]
    header = b"XPKG" + b"entries=blob1,blob2;" * 20
    edited = []
    for index in (2, 0, 3, 1):
        blob = bytearray(blobs[index])
        for at in rng.sample(range(len(blob)), len(blob) // 50):
            blob[at] = (blob[at] + rng.choice((1, 255))) % 256
        edited.append(bytes(blob))
    old, new = directory / "unknown-old.pkg", directory / "unknown-new.pkg"
    old.write_bytes(header + b"".join(blobs))
    new.write_bytes(header + b"comment=fine-tuned;" * 2 + b"".join(edited))
    return old, new


def make_pairs(directory: Path, total_bytes: int) -> list[tuple[str, Path, Path]]:
    """(name, old, new) for every format pair, about ``total_bytes`` each; reused if there."""
    directory.mkdir(parents=True, exist_ok=True)
    pairs = [("shape change + fine-tune", *_shape_change(directory, total_bytes))]
    pairs.append(("grown columns + fine-tune", *_columns_change(directory, total_bytes)))
    pairs += [(name, *paths) for name, paths in _formats(directory, total_bytes).items()]
    pairs.append(("unknown container", *_unknown(directory, total_bytes)))
    return pairs
