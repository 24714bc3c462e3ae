"""The delta service: builds off the event loop, caches by content, offers only deltas that pay."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from ferry.protocol.delta import apply_delta_file
from ferry.server.deltas import DeltaBuilder, EncodeOptions

Pair = Callable[..., tuple[Path, Path]]
OPTIONS = EncodeOptions(chunk_size=64 << 10, workers=1)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_async_build_runs_in_the_pool_and_is_cached(model_pair: Pair, tmp_path: Path) -> None:
    old, new = model_pair()
    service = DeltaBuilder(tmp_path / "cache", options=OPTIONS)

    async def scenario() -> tuple[object, object, int]:
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        beat = asyncio.create_task(heartbeat())
        first, second = await asyncio.gather(
            service.get(_sha(old), _sha(new), old, new), service.get(_sha(old), _sha(new), old, new)
        )
        beat.cancel()
        return first, second, ticks

    try:
        first, second, ticks = asyncio.run(scenario())
    finally:
        service.close()
    assert first is not None and first == second
    assert ticks > 0  # the loop kept running while the pool built the delta
    blobs = list((tmp_path / "cache" / "blobs").rglob("*"))
    assert [p for p in blobs if p.is_file()] == [first.path]
    assert first.path.name == _sha(first.path) == first.record.delta_sha256
    apply_delta_file(old, first.path, tmp_path / "out", new.stat().st_size, _sha(new))
    assert (tmp_path / "out").read_bytes() == new.read_bytes()


def test_cached_pair_is_not_rebuilt(model_pair: Pair, tmp_path: Path) -> None:
    old, new = model_pair()
    service = DeltaBuilder(tmp_path / "cache", options=OPTIONS)
    offer = service.build(_sha(old), _sha(new), old, new)
    assert offer is not None
    stamp = offer.path.stat().st_mtime_ns
    old.unlink()  # a rebuild would now fail
    again = service.build(offer.record.from_sha256, _sha(new), old, new)
    assert again == offer
    assert offer.path.stat().st_mtime_ns == stamp


def test_delta_not_worth_it_is_not_offered(tmp_path: Path) -> None:
    rng = random.Random(9)
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(rng.randbytes(200_000))
    new.write_bytes(rng.randbytes(200_000))  # retrained from scratch: nothing in common
    service = DeltaBuilder(tmp_path / "cache", options=OPTIONS, max_fraction=0.6)
    assert service.build(_sha(old), _sha(new), old, new) is None
    record = service.cached(_sha(old), _sha(new))
    assert record is not None and record.fraction() > 0.6  # remembered, so not rebuilt
    generous = DeltaBuilder(tmp_path / "cache", options=OPTIONS, max_fraction=1.5)
    assert generous.offer(record) is not None


def test_mislabelled_artifacts_are_refused(model_pair: Pair, tmp_path: Path) -> None:
    old, new = model_pair()
    service = DeltaBuilder(tmp_path / "cache", options=OPTIONS)
    with pytest.raises(ValueError, match="do not hash"):
        service.build("0" * 64, _sha(new), old, new)
    assert service.cached("0" * 64, _sha(new)) is None


def test_offer_describes_itself_as_a_descriptor(model_pair: Pair, tmp_path: Path) -> None:
    old, new = model_pair()
    offer = DeltaBuilder(tmp_path / "cache", options=OPTIONS).build(_sha(old), _sha(new), old, new)
    assert offer is not None
    descriptor = offer.descriptor("a" * 64, "b" * 64, "model.safetensors")
    assert descriptor.delta_size == offer.path.stat().st_size
    assert descriptor.to_size == new.stat().st_size
    assert (descriptor.from_sha256, descriptor.to_sha256) == (_sha(old), _sha(new))
