"""The delta service: builds off the event loop, caches by content, offers only deltas that pay."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from ferry.protocol.delta import apply_delta_file
from ferry.server.blobs.store import LocalBlobStore
from ferry.server.deltas import DeltaBuilder, EncodeOptions

Pair = Callable[..., tuple[Path, Path]]
OPTIONS = EncodeOptions(chunk_size=64 << 10, workers=1)


def _builder(tmp_path: Path, **options: object) -> DeltaBuilder:
    store = LocalBlobStore(tmp_path / "cache")
    return DeltaBuilder(store, tmp_path / "work", options=OPTIONS, **options)  # type: ignore[arg-type]


def _delta_file(service: DeltaBuilder, sha256: str) -> Path:
    path = service.store.local_file(sha256)
    assert path is not None
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_async_build_runs_in_the_pool_and_is_cached(model_pair: Pair, tmp_path: Path) -> None:
    old, new = model_pair()
    service = _builder(tmp_path)

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
    delta = _delta_file(service, first.record.delta_sha256)
    stored = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert sorted(stored) == sorted(
        [delta, tmp_path / "cache/records/deltas" / _sha(old) / f"{_sha(new)}.json"]
    )
    assert _sha(delta) == first.record.delta_sha256
    assert not list((tmp_path / "work").rglob("*.delta"))  # the pool's temp file is gone
    apply_delta_file(old, delta, tmp_path / "out", new.stat().st_size, _sha(new))
    assert (tmp_path / "out").read_bytes() == new.read_bytes()


def test_cached_pair_is_not_rebuilt(model_pair: Pair, tmp_path: Path) -> None:
    old, new = model_pair()
    service = _builder(tmp_path)
    offer = service.build(_sha(old), _sha(new), old, new)
    assert offer is not None
    stamp = _delta_file(service, offer.record.delta_sha256).stat().st_mtime_ns
    old.unlink()  # a rebuild would now fail
    again = service.build(offer.record.from_sha256, _sha(new), old, new)
    assert again == offer
    assert _delta_file(service, offer.record.delta_sha256).stat().st_mtime_ns == stamp


def test_delta_not_worth_it_is_not_offered(tmp_path: Path) -> None:
    rng = random.Random(9)
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(rng.randbytes(200_000))
    new.write_bytes(rng.randbytes(200_000))  # retrained from scratch: nothing in common
    service = _builder(tmp_path, max_fraction=0.6)
    assert service.build(_sha(old), _sha(new), old, new) is None
    record = service.cached(_sha(old), _sha(new))
    assert record is not None and record.fraction() > 0.6  # remembered, so not rebuilt
    generous = _builder(tmp_path, max_fraction=1.5)
    assert generous.offer(record) is not None


def test_mislabelled_artifacts_are_refused(model_pair: Pair, tmp_path: Path) -> None:
    old, new = model_pair()
    service = _builder(tmp_path)
    with pytest.raises(ValueError, match="do not hash"):
        service.build("0" * 64, _sha(new), old, new)
    assert service.cached("0" * 64, _sha(new)) is None


def test_offer_describes_itself_as_a_descriptor(model_pair: Pair, tmp_path: Path) -> None:
    old, new = model_pair()
    service = _builder(tmp_path)
    offer = service.build(_sha(old), _sha(new), old, new)
    assert offer is not None
    descriptor = offer.descriptor("a" * 64, "b" * 64, "model.safetensors")
    assert descriptor.delta_size == _delta_file(service, offer.record.delta_sha256).stat().st_size
    assert descriptor.to_size == new.stat().st_size
    assert (descriptor.from_sha256, descriptor.to_sha256) == (_sha(old), _sha(new))


def test_inputs_come_from_the_store_when_no_paths_are_given(
    model_pair: Pair, tmp_path: Path
) -> None:
    old, new = model_pair()
    old_sha, new_sha = _sha(old), _sha(new)
    service = _builder(tmp_path)
    for path, sha in ((old, old_sha), (new, new_sha)):
        copy = tmp_path / f"copy-{sha}"
        copy.write_bytes(path.read_bytes())
        service.store.put_file(sha, copy)
    offer = asyncio.run(service.get(old_sha, new_sha))
    service.close()
    assert offer is not None
    delta = _delta_file(service, offer.record.delta_sha256)
    apply_delta_file(old, delta, tmp_path / "out", new.stat().st_size, new_sha)
    assert (tmp_path / "out").read_bytes() == new.read_bytes()
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]  # scratch cleaned


def test_a_missing_input_fails_the_build_and_caches_nothing(tmp_path: Path) -> None:
    service = _builder(tmp_path)
    with pytest.raises(LookupError):
        service.build("a" * 64, "b" * 64)
    assert service.cached("a" * 64, "b" * 64) is None
