"""Fixtures for delta tests: (old, new) model pairs and one genuine delta to attack."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ferry.protocol.delta import codec
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


@pytest.fixture(params=["numpy", "pure"])
def lanes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test with the decoder's numpy fast path, then with the big-integer one."""
    if request.param == "numpy":
        pytest.importorskip("numpy")
    else:
        monkeypatch.setenv(codec.PURE_PYTHON_ENV, "1")
    codec._accelerated.cache_clear()
    assert codec.uses_numpy() is (request.param == "numpy")
    yield request.param
    monkeypatch.delenv(codec.PURE_PYTHON_ENV, raising=False)
    codec._accelerated.cache_clear()
