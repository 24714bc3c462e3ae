"""A small safetensors-like float32 model and its fine-tuned successor (every weight nudged)."""

from __future__ import annotations

import random
import secrets
from pathlib import Path

from tests.deltas.models import drift, f32, floats, write_safetensors

WEIGHTS = "model.safetensors"


def model_pair(directory: Path, size: int = 2 << 20, seed: int = 8) -> tuple[Path, Path]:
    """(v1, v2) of about ``size`` bytes: two float32 layers, every value moved by ~0.001 %.

    A delta of this pair is about 30 % of the file (a real full fine-tune of MiniLM: 27 %)."""
    rng = random.Random(seed)
    count = size // 8
    layers = {name: floats(rng, count) for name in ("encoder.weight", "head.weight")}
    old = {name: ("F32", f32(values)) for name, values in layers.items()}
    new = {name: ("F32", f32(drift(values, rng, amount=1e-5))) for name, values in layers.items()}
    (directory / "v1").mkdir(parents=True, exist_ok=True)
    (directory / "v2").mkdir(parents=True, exist_ok=True)
    return (
        write_safetensors(directory / "v1" / WEIGHTS, old),
        write_safetensors(directory / "v2" / WEIGHTS, new),
    )


def random_pair(directory: Path, size: int = 256 << 10) -> tuple[Path, Path]:
    """Two unrelated files: no delta between them is worth sending."""
    directory.mkdir(parents=True, exist_ok=True)
    old, new = directory / "old.bin", directory / "new.bin"
    old.write_bytes(secrets.token_bytes(size))
    new.write_bytes(secrets.token_bytes(size))
    return old, new
