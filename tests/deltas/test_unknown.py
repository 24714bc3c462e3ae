"""Containers Ferry does not parse: their chunks are located in the old file and coded by bytes.

Whole-file bsdiff finds shifted, reordered and slightly edited payloads anywhere;
pairing chunks with equal old offsets found none of them (75x bsdiff's size on the
pair below). The matcher finds them, so an unknown container stays within 2 % of
whole-file bsdiff.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import bsdiff4
import pytest

from ferry.protocol.delta import apply_delta_file
from ferry.protocol.delta.encode import EncodeOptions, build_delta
from ferry.protocol.delta.encode._match import Matcher
from ferry.protocol.delta.encode._plan import plan_chunks
from tests.deltas.models import SMALL


def _edit(rng: random.Random, data: bytes, fraction: float) -> bytes:
    """Change a few bytes by ±1: what re-quantising int8 weights does to a payload."""
    out = bytearray(data)
    for at in rng.sample(range(len(out)), int(len(out) * fraction)):
        out[at] = (out[at] + rng.choice((1, 255))) % 256
    return bytes(out)


def _package(tmp_path: Path) -> tuple[Path, Path]:
    """An unknown container: a grown header, its four payloads reordered and edited."""
    rng = random.Random(5)
    blobs = [rng.randbytes(1_200_000) for _ in range(4)]
    header = b"XPKG" + b"entries=blob1,blob2;" * 20
    old = header + b"".join(blobs)
    new = header + b"comment=fine-tuned;" * 2
    new += b"".join(_edit(rng, blobs[i], 0.02) for i in (2, 0, 3, 1))
    (tmp_path / "old.pkg").write_bytes(old)
    (tmp_path / "new.pkg").write_bytes(new)
    return tmp_path / "old.pkg", tmp_path / "new.pkg"


def test_reordered_edited_unknown_container_is_within_two_percent_of_bsdiff(
    tmp_path: Path,
) -> None:
    old, new = _package(tmp_path)
    result = build_delta(old, new, tmp_path / "delta", EncodeOptions(workers=1))
    whole_file_bsdiff = len(bsdiff4.diff(old.read_bytes(), new.read_bytes()))
    assert result.size <= 1.02 * whole_file_bsdiff
    data = new.read_bytes()
    apply_delta_file(
        old, result.path, tmp_path / "out", len(data), hashlib.sha256(data).hexdigest()
    )
    assert (tmp_path / "out").read_bytes() == data


def test_matcher_finds_a_payload_moved_far_beyond_the_neighbouring_chunks(tmp_path: Path) -> None:
    rng = random.Random(2)
    payload = rng.randbytes(200_000)
    (tmp_path / "old").write_bytes(rng.randbytes(3_000_000) + payload)
    (tmp_path / "new").write_bytes(payload + rng.randbytes(1000))
    with open(tmp_path / "old", "rb") as old, open(tmp_path / "new", "rb") as new:
        matcher = Matcher(old.fileno(), 3_200_000, new.fileno())
        shift, usable = matcher.locate(0, 200_000)
    assert (shift, usable) == (3_000_000, 200_000)


def test_matcher_cuts_where_new_bytes_start(tmp_path: Path) -> None:
    rng = random.Random(4)
    payload = rng.randbytes(100_000)
    (tmp_path / "old").write_bytes(payload)
    (tmp_path / "new").write_bytes(payload[:60_000] + rng.randbytes(40_000))
    with open(tmp_path / "old", "rb") as old, open(tmp_path / "new", "rb") as new:
        shift, usable = Matcher(old.fileno(), 100_000, new.fileno()).locate(0, 100_000)
    assert shift == 0
    assert 60_000 <= usable < 60_100


def test_matcher_ignores_padding_and_runs_of_its_own_patterns(tmp_path: Path) -> None:
    """Constant runs and a file made of one anchor pattern neither match everywhere nor
    make the index grow without bound."""
    body = b"\x5a\xa5" * 2_000_000 + bytes(1_000_000)
    (tmp_path / "old").write_bytes(body)
    (tmp_path / "new").write_bytes(bytes(100) + body)
    with open(tmp_path / "old", "rb") as old, open(tmp_path / "new", "rb") as new:
        matcher = Matcher(old.fileno(), len(body), new.fileno())
        shift, _ = matcher.locate(0, 1 << 20)
        assert matcher._anchors == {}
    assert shift == 0


@pytest.mark.parametrize("seed", range(6))
def test_located_chunks_tile_the_new_file_exactly(seed: int, tmp_path: Path) -> None:
    """Cuts at placement boundaries never overlap, skip bytes or run past a region's end."""
    rng = random.Random(seed)
    blocks = [rng.randbytes(rng.randrange(100, 90_000)) for _ in range(8)]
    old = b"".join(blocks)
    picked = [rng.choice(blocks)[: rng.randrange(1, 90_000)] for _ in range(10)]
    new = b"".join(
        _edit(rng, block, 0.01) + rng.randbytes(rng.randrange(0, 70)) for block in picked
    )
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    with open(tmp_path / "old", "rb") as o, open(tmp_path / "new", "rb") as n:
        plans = plan_chunks(
            None, len(new), None, len(old), 64 << 10, Matcher(o.fileno(), len(old), n.fileno())
        )
    position = 0
    for plan in plans:
        assert plan.offset == position and plan.length > 0
        assert plan.aligned is None or plan.aligned + plan.length <= len(old)
        position += plan.length
    assert position == len(new)
    result = build_delta(tmp_path / "old", tmp_path / "new", tmp_path / "delta", SMALL)
    digest = hashlib.sha256(new).hexdigest()
    apply_delta_file(tmp_path / "old", result.path, tmp_path / "out", len(new), digest)
