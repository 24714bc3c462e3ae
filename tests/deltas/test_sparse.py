"""The SPARSE residual coding: exact inverse, smaller than bzip2 where it applies, and refused
when forged (every declared size is checked before the output buffer is filled)."""

from __future__ import annotations

import bz2
import hashlib
import random
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from ferry.protocol.delta import (
    Codec,
    DeltaCorruptError,
    DeltaError,
    DeltaTooLargeError,
    apply_delta_file,
)
from ferry.protocol.delta.codec import SPARSE_SHARE, sparse_decode, sparse_encode
from ferry.protocol.delta.encode import _encoder
from ferry.server.deltas import build_delta
from tests.deltas.models import SMALL, join_delta, split_delta, write_safetensors

SIZE = 100_000


def _residual(rng: random.Random, positions: list[int], size: int = SIZE) -> bytes:
    out = bytearray(size)
    for at in positions:
        out[at] = rng.randrange(1, 256)
    return bytes(out)


@pytest.mark.parametrize(
    "positions",
    [
        [0],
        [SIZE - 1],
        [255, 511, 768],  # gaps of exactly 255 and 256 around the long-skip symbol
        [0, 1, 2, 3, 90_000],  # adjacent values, then one gap of many long skips
        sorted(random.Random(1).sample(range(SIZE), SIZE // 100)),
    ],
)
def test_sparse_round_trip(positions: list[int], lanes: str) -> None:
    residual = _residual(random.Random(len(positions)), positions)
    payload = sparse_encode(residual, 3)
    assert payload is not None
    assert sparse_decode(payload, SIZE) == residual


def test_dense_or_empty_residuals_are_not_coded_sparse() -> None:
    rng = random.Random(2)
    dense = _residual(rng, sorted(rng.sample(range(SIZE), SIZE // SPARSE_SHARE + 1)))
    assert sparse_encode(dense, 3) is None
    assert sparse_encode(bytes(SIZE), 3) is None


def test_sparse_beats_bzip2_on_one_percent_of_small_changes() -> None:
    rng = random.Random(3)
    residual = bytearray(SIZE)
    for at in rng.sample(range(SIZE), SIZE // 100):
        residual[at] = rng.choice((1, 255))  # ±1: an int8 value re-quantised one step away
    payload = sparse_encode(bytes(residual), 19)
    assert payload is not None
    assert len(payload) < len(bz2.compress(bytes(residual), 9))


def _payload(count: int, skips: bytes, values: bytes, first: int | None = None) -> bytes:
    zstd = zstandard.ZstdCompressor()
    frame = zstd.compress(skips)
    head = struct.pack(">II", count, len(frame) if first is None else first)
    return head + frame + zstd.compress(values)


@pytest.mark.parametrize(
    ("payload", "out_size", "error", "message"),
    [
        (b"\x00\x00", SIZE, DeltaCorruptError, "shorter than its header"),
        (_payload(SIZE // SPARSE_SHARE + 1, b"", b""), SIZE, DeltaTooLargeError, "symbols for"),
        (_payload(2, b"\x00\x00", b"\x01\x01", first=1 << 30), SIZE, DeltaCorruptError,
         "runs past the payload"),
        (_payload(2, b"\x00", b"\x01\x01"), SIZE, DeltaCorruptError, "declares 1 bytes"),
        (_payload(2, b"\xff\xff", b"\x01\x01"), 500, DeltaCorruptError, "past the chunk"),
    ],
    ids=["short", "too_many_symbols", "frame_past_payload", "frame_size", "past_chunk"],
)  # fmt: skip
def test_forged_sparse_payloads_are_refused(
    payload: bytes, out_size: int, error: type[DeltaError], message: str, lanes: str
) -> None:
    with pytest.raises(error, match=message):
        sparse_decode(payload, out_size)


def test_forged_sparse_chunk_in_a_delta_leaves_no_output(tmp_path: Path) -> None:
    rng = random.Random(6)
    q_old = rng.randbytes(200_000)
    q_new = bytearray(q_old)
    for index in rng.sample(range(len(q_new)), 2_000):
        q_new[index] = (q_new[index] + rng.choice((-1, 1))) % 256
    old = write_safetensors(tmp_path / "old.safetensors", {"q": ("I8", q_old)})
    new = write_safetensors(tmp_path / "new.safetensors", {"q": ("I8", bytes(q_new))})
    result = build_delta(old, new, tmp_path / "delta", SMALL)
    head, chunks = split_delta(result.path.read_bytes())
    index = next(i for i, (r, _) in enumerate(chunks) if r.codec is Codec.SPARSE)
    record, payload = chunks[index]
    forged = struct.pack(">I", record.out_size) + payload[4:]  # one symbol per output byte
    chunks[index] = (replace(record, payload_len=len(forged)), forged)
    delta = tmp_path / "forged"
    delta.write_bytes(join_delta(head, chunks))
    data = new.read_bytes()
    with pytest.raises(DeltaTooLargeError):
        apply_delta_file(old, delta, tmp_path / "out", len(data), hashlib.sha256(data).hexdigest())
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out.delta-part").exists()


def _float_candidate(plain: bytes, payload_len: int) -> _encoder._Candidate:
    return _encoder._Candidate(b"z" * payload_len, Codec.FLOAT, plain=plain)


def test_bzip2_is_kept_only_where_it_saves_enough_for_its_slow_decoding() -> None:
    """bzip2 decodes ~10x slower than zstd: one saved byte per 512 output bytes, or zstd."""
    rng = random.Random(7)
    residual = bytearray(1 << 16)
    for at in rng.sample(range(len(residual)), len(residual) // 7):  # too dense for SPARSE
        residual[at] = rng.choice((1, 255))
    plain = bytes(residual)
    packed = len(bz2.compress(plain, 9))
    limit = len(plain) // _encoder.BZ2_OUTPUT_PER_BYTE_SAVED  # 128 bytes here
    barely = _float_candidate(plain, packed + limit)  # zstd only `limit` bytes larger
    assert _encoder._sparse(barely, [barely]).codec is Codec.FLOAT
    clearly = _float_candidate(plain, packed + limit + 1)
    assert _encoder._sparse(clearly, [clearly]).codec is Codec.FLOAT_BZ2
