"""The decoder's hashing and writing threads: refusals stay prompt, precise and leave nothing.

The old file is hashed, and each decoded chunk verified and written, in threads
beside the decode; these tests pin what that must not change.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.protocol.delta import (
    ChunkRecord,
    DeltaCorruptError,
    DeltaWrongBaseError,
    apply_delta_file,
)
from ferry.protocol.delta.encode import build_delta
from tests.deltas.models import SMALL, join_delta, make_pair, split_delta


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    directory = tmp_path_factory.mktemp("threads")
    old, new = make_pair(directory)
    return old, new, build_delta(old, new, directory / "delta", SMALL).path.read_bytes()


def _feed(raw: bytes, consumed: list[int], fail_after: int | None = None) -> Iterator[bytes]:
    for at in range(0, len(raw), 4096):
        if fail_after is not None and at >= fail_after:
            raise RuntimeError("the download was cut")
        consumed[0] = at + 4096
        yield raw[at : at + 4096]


def _apply(old: Path, new: Path, stream: object, out: Path) -> None:
    data = new.read_bytes()
    apply_delta_file(old, stream, out, len(data), hashlib.sha256(data).hexdigest())  # type: ignore[arg-type]


def test_a_chunk_with_a_wrong_hash_stops_the_apply_within_a_few_chunks(
    built: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    old, new, raw = built
    head, chunks = split_delta(raw)
    record, payload = chunks[1]
    forged = ChunkRecord(**{**record.__dict__, "sha256": bytes(32)})
    chunks[1] = (forged, payload)
    consumed = [0]
    with pytest.raises(DeltaCorruptError, match="chunk 1"):
        _apply(old, new, _feed(join_delta(head, chunks), consumed), tmp_path / "out")
    assert consumed[0] < len(raw) * 3 // 4  # abandoned early, not read to the end
    assert list(tmp_path.iterdir()) == []


def test_a_stream_error_propagates_unchanged_and_stops_every_thread(
    built: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    old, new, raw = built
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="cut"):
        _apply(old, new, _feed(raw, [0], fail_after=len(raw) // 2), tmp_path / "out")
    assert threading.active_count() == before
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_base_of_the_right_size_is_refused_as_such(
    built: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    """Chunks that decode fine on a wrong base still end in delta_wrong_base."""
    old, new, raw = built
    other = tmp_path / "other"
    body = bytearray(old.read_bytes())
    body[3] ^= 1  # inside the header's length field: no tensor chunk reads it
    other.write_bytes(bytes(body))
    with pytest.raises(DeltaWrongBaseError):
        _apply(other, new, _feed(raw, [0]), tmp_path / "out")
    assert not (tmp_path / "out").exists()
