"""Fixtures for delta tests: (old, new) model pairs and one genuine delta to attack."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ferry.server.deltas import build_delta
from tests.deltas.models import SMALL, make_pair


@pytest.fixture
def model_pair(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """A factory of (old, new) safetensors files: fine-tuned drift plus an int8 tensor."""

    def make(*, reorder: bool = False, add: bool = False) -> tuple[Path, Path]:
        return make_pair(tmp_path, reorder=reorder, add=add)

    return make


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    """(old, new, delta bytes): moved and added tensors, so every codec appears."""
    directory = tmp_path_factory.mktemp("genuine")
    old, new = make_pair(directory, reorder=True, add=True)
    return old, new, build_delta(old, new, directory / "delta", SMALL).path.read_bytes()
