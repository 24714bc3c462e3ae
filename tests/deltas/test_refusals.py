"""Every malformed, forged or hostile delta is refused with its own code, before allocating.

Each attack starts from a genuine delta and bends it; the agent must keep its
current model (no output file appears) and fall back to the full download.
"""

from __future__ import annotations

import bz2
import hashlib
import struct
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import pytest
import zstandard

from ferry.protocol.delta import (
    Codec,
    DeltaCorruptError,
    DeltaError,
    DeltaLimits,
    DeltaResultMismatchError,
    DeltaTooLargeError,
    DeltaTruncatedError,
    DeltaUnsupportedError,
    DeltaWrongBaseError,
    Op,
    apply_delta_file,
)
from ferry.protocol.delta._format import RECORD
from ferry.protocol.errors import ProtocolError
from ferry.server.deltas import build_bsdiff40, build_compressed
from tests.deltas.models import SMALL, header_of, join_delta, split_delta, with_header

Forge = Callable[[bytes], bytes]
HUGE = 1 << 31


@dataclass(frozen=True)
class Attack:
    name: str
    forge: Forge
    error: type[DeltaError]


def _records(change: Callable[[list], None]) -> Forge:
    def forge(raw: bytes) -> bytes:
        head, chunks = split_delta(raw)
        change(chunks)
        return join_delta(head, chunks)

    return forge


def _first(codecs: tuple[Codec, ...], **fields: object) -> Callable[[list], None]:
    """Replace fields (record or payload) of the first chunk coded with one of ``codecs``."""

    def change(chunks: list) -> None:
        index = next(i for i, (r, _) in enumerate(chunks) if r.codec in codecs)
        record, payload = chunks[index]
        changes = dict(fields)
        payload = changes.pop("payload", payload)
        changes.setdefault("payload_len", len(payload))
        chunks[index] = (replace(record, **changes), payload)

    return change


def _swap(chunks: list) -> None:
    chunks[1], chunks[2] = chunks[2], chunks[1]


def _flip_payload_byte(chunks: list) -> None:
    index = next(i for i, (r, p) in enumerate(chunks) if r.codec is Codec.FLOAT)
    record, payload = chunks[index]
    chunks[index] = (record, payload[:-20] + bytes([payload[-20] ^ 0x40]) + payload[-19:])


@cache
def _zstd_bomb() -> bytes:
    """50 MB of zeros in a few kB: a chunk that claims 64 kB must not inflate it."""
    return zstandard.ZstdCompressor(level=3).compress(bytes(50 << 20))


@cache
def _zeros_bz2() -> bytes:
    return bz2.compress(bytes(50 << 20), compresslevel=1)


def _bsdiff_bomb(out_size: int) -> bytes:
    control = bz2.compress(struct.pack("<qqq", out_size, 0, 0))
    diff = _zeros_bz2()
    extra = bz2.compress(b"")
    sizes = struct.pack("<qqq", len(control), len(diff), out_size)
    return b"BSDIFF40" + sizes + control + diff + extra


def _bsdiff_chunk(make_payload: Callable[[int], bytes]) -> Callable[[list], None]:
    def change(chunks: list) -> None:
        index = next(i for i, (r, _) in enumerate(chunks) if r.codec is Codec.FLOAT)
        record, _ = chunks[index]
        payload = make_payload(record.out_size)
        chunks[index] = (
            replace(record, codec=Codec.BSDIFF, op=Op.NONE, payload_len=len(payload)),
            payload,
        )

    return change


def _bsdiff_wrong_size(out_size: int) -> bytes:
    sizes = struct.pack("<qqq", 14, 14, out_size + 1)
    return b"BSDIFF40" + sizes + bz2.compress(b"") * 3


def _header_length(raw: bytes, length: int) -> bytes:
    return raw[:8] + struct.pack(">I", length) + raw[12:]


def _unknown_codec(raw: bytes) -> bytes:
    at = len(split_delta(raw)[0]) + 12  # the first record's codec byte
    return raw[:at] + bytes([99]) + raw[at + 1 :]


ATTACKS = [
    Attack("truncated_in_header", lambda raw: raw[:30], DeltaTruncatedError),
    Attack(
        "truncated_in_a_record",
        lambda raw: raw[: len(split_delta(raw)[0]) + 20],
        DeltaTruncatedError,
    ),
    Attack("truncated_in_a_payload", lambda raw: raw[:-10], DeltaTruncatedError),
    Attack("last_chunk_missing", _records(lambda chunks: chunks.pop()), DeltaTruncatedError),
    Attack("trailing_bytes", lambda raw: raw + b"more", DeltaCorruptError),
    Attack("chunks_reordered", _records(_swap), DeltaCorruptError),
    Attack("payload_forged", _records(_flip_payload_byte), DeltaCorruptError),
    Attack(
        "chunk_sha256_forged", _records(_first((Codec.FLOAT,), sha256=bytes(32))), DeltaCorruptError
    ),
    Attack("not_a_delta", lambda raw: b"PK\x03\x04" + raw[4:], DeltaCorruptError),
    Attack("future_format_version", lambda raw: with_header(raw, version=2), DeltaUnsupportedError),
    Attack("unknown_codec", _unknown_codec, DeltaUnsupportedError),
    Attack("header_length_huge", lambda raw: _header_length(raw, HUGE), DeltaTooLargeError),
    Attack(
        "header_chunk_size_huge", lambda raw: with_header(raw, chunk_size=HUGE), DeltaTooLargeError
    ),
    Attack(
        "header_chunk_count_huge", lambda raw: with_header(raw, chunks=HUGE), DeltaTooLargeError
    ),
    Attack(
        "chunk_output_huge", _records(_first((Codec.FLOAT,), out_size=HUGE)), DeltaTooLargeError
    ),
    Attack(
        "chunk_payload_huge", _records(_first((Codec.FLOAT,), payload_len=HUGE)), DeltaTooLargeError
    ),
    Attack(
        "source_span_huge",
        _records(_first((Codec.ZSTD_REF, Codec.BSDIFF), src_len=HUGE)),
        DeltaTooLargeError,
    ),
    Attack("source_past_base", _records(_first((Codec.COPY,), src_offset=HUGE)), DeltaCorruptError),
    Attack("zstd_bomb", _records(_first((Codec.FLOAT,), payload=_zstd_bomb())), DeltaCorruptError),
    Attack("bsdiff_bomb", _records(_bsdiff_chunk(_bsdiff_bomb)), DeltaTooLargeError),
    Attack("bsdiff_wrong_size", _records(_bsdiff_chunk(_bsdiff_wrong_size)), DeltaCorruptError),
    Attack(
        "bzip2_bomb",
        _records(_first((Codec.FLOAT,), codec=Codec.FLOAT_BZ2, payload=_zeros_bz2())),
        DeltaTooLargeError,
    ),
    Attack(
        "target_forged",
        lambda raw: with_header(raw, target_sha256="0" * 64),
        DeltaResultMismatchError,
    ),
    Attack("base_forged", lambda raw: with_header(raw, base_sha256="0" * 64), DeltaWrongBaseError),
]


def test_genuine_delta_has_every_codec_the_attacks_need(genuine: tuple[Path, Path, bytes]) -> None:
    codecs = {record.codec for record, _ in split_delta(genuine[2])[1]}
    assert {Codec.COPY, Codec.FLOAT} <= codecs
    assert codecs & {Codec.ZSTD_REF, Codec.BSDIFF}


def _apply(old: Path | None, new: Path, delta: bytes, tmp_path: Path, **kwargs: object) -> Path:
    path = tmp_path / "forged"
    path.write_bytes(delta)
    out = tmp_path / "out"
    data = new.read_bytes()
    apply_delta_file(old, path, out, len(data), hashlib.sha256(data).hexdigest(), **kwargs)  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_refused_with_its_code_and_leaves_no_output(
    attack: Attack, genuine: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    old, new, raw = genuine
    forged = attack.forge(raw)
    assert forged != raw
    tracemalloc.start()
    try:
        with pytest.raises(attack.error) as caught:
            _apply(old, new, forged, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(caught.value, ProtocolError)
    assert caught.value.code == attack.error.code
    assert peak < 4 << 20  # no bomb inflated, no declared size allocated
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out.delta-part").exists()


def test_error_codes_are_stable() -> None:
    codes = {e.code for e in (DeltaCorruptError, DeltaTruncatedError, DeltaWrongBaseError,
                              DeltaTooLargeError, DeltaUnsupportedError, DeltaResultMismatchError)}  # fmt: skip
    assert codes == {
        "delta_corrupt", "delta_truncated", "delta_wrong_base",
        "delta_too_large", "delta_unsupported", "delta_result_mismatch",
    }  # fmt: skip
    assert issubclass(DeltaError, ProtocolError)


def test_genuine_delta_applies(genuine: tuple[Path, Path, bytes], tmp_path: Path) -> None:
    old, new, raw = genuine
    assert _apply(old, new, raw, tmp_path).read_bytes() == new.read_bytes()


def test_delta_for_another_base_is_refused(
    genuine: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    old, new, raw = genuine
    other = tmp_path / "other"
    body = bytearray(old.read_bytes())
    body[-1] ^= 1  # same size, one bit different
    other.write_bytes(bytes(body))
    with pytest.raises(DeltaWrongBaseError):
        _apply(other, new, raw, tmp_path)
    other.write_bytes(old.read_bytes() + b"x")
    with pytest.raises(DeltaWrongBaseError):
        _apply(other, new, raw, tmp_path)
    with pytest.raises(DeltaWrongBaseError):
        _apply(None, new, raw, tmp_path)


def test_delta_for_another_target_than_the_manifest_is_refused(
    genuine: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    old, new, raw = genuine
    (tmp_path / "d").write_bytes(raw)
    size = len(new.read_bytes())
    with pytest.raises(DeltaResultMismatchError):
        apply_delta_file(old, tmp_path / "d", tmp_path / "out", size, "1" * 64)
    with pytest.raises(DeltaResultMismatchError):
        apply_delta_file(
            old, tmp_path / "d", tmp_path / "out", size + 1, header_of(raw)["target_sha256"]
        )


def test_delta_longer_than_its_descriptor_is_refused_while_streaming(
    genuine: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    old, new, raw = genuine
    with pytest.raises(DeltaTooLargeError):
        _apply(old, new, raw, tmp_path, delta_size=len(raw) - 1)
    with pytest.raises(DeltaCorruptError):
        _apply(old, new, raw, tmp_path, delta_size=len(raw), delta_sha256="2" * 64)


def test_limits_are_configurable(genuine: tuple[Path, Path, bytes], tmp_path: Path) -> None:
    old, new, raw = genuine
    with pytest.raises(DeltaTooLargeError):
        _apply(old, new, raw, tmp_path, limits=DeltaLimits(max_chunk_size=1024))
    with pytest.raises(DeltaTooLargeError):
        _apply(old, new, raw, tmp_path, limits=DeltaLimits(max_target_size=1024))


def test_compressed_artifact_cannot_reference_an_old_file(
    model_pair: Callable[..., tuple[Path, Path]], tmp_path: Path
) -> None:
    old, new = model_pair()
    raw = build_compressed(new, tmp_path / "full", SMALL).path.read_bytes()
    head, chunks = split_delta(raw)
    record, _ = chunks[0]
    chunks[0] = (
        replace(record, codec=Codec.COPY, width=1, src_len=record.out_size, payload_len=0),
        b"",
    )
    with pytest.raises(DeltaCorruptError):
        _apply(old, new, join_delta(head, chunks), tmp_path)


def test_whole_file_bsdiff_is_refused_above_the_chunk_limit(
    model_pair: Callable[..., tuple[Path, Path]], tmp_path: Path
) -> None:
    old, new = model_pair()
    patch = build_bsdiff40(old, new, tmp_path / "patch").path.read_bytes()
    assert _apply(old, new, patch, tmp_path).read_bytes() == new.read_bytes()
    with pytest.raises(DeltaTooLargeError):
        _apply(old, new, patch, tmp_path, limits=DeltaLimits(max_chunk_size=64 << 10))


def test_record_layout_is_62_bytes() -> None:
    assert RECORD.size == 62
