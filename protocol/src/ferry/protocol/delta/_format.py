"""The Ferry delta container (specified in docs/delta-format.md).

    magic "FRYDELTA" | u32 header length | canonical-JSON header
    then ``chunks`` times: 62-byte record | payload

Every size the decoder will allocate is declared up front (header, then each
record) and checked against :class:`DeltaLimits` and the signed manifest before
any buffer of that size exists.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ferry.protocol.canonical import canonical_json, parse_json
from ferry.protocol.delta._errors import (
    DeltaCorruptError,
    DeltaTooLargeError,
    DeltaUnsupportedError,
)
from ferry.protocol.delta.codec import WIDTHS, Op
from ferry.protocol.errors import MalformedError

MAGIC = b"FRYDELTA"
FORMAT_VERSION = 1
HEADER_PREFIX = struct.Struct(">8sI")
RECORD = struct.Struct(">QIBBQII32s")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HEADER_KEYS = {
    "format", "version", "chunk_size", "chunks",
    "base_size", "base_sha256", "target_size", "target_sha256",
}  # fmt: skip


class Codec(IntEnum):
    """How one chunk's output is produced."""

    COPY = 1  # old[src_offset : src_offset + out_size], no payload
    ZSTD = 2  # zstd(byte planes of the chunk); width 1 = plain zstd
    FLOAT = 3  # zstd(byte planes of lane_delta(new, aligned old, op, width))
    BSDIFF = 4  # BSDIFF40 patch against old[src_offset : src_offset + src_len]
    ZSTD_REF = 5  # zstd with old[src_offset : src_offset + src_len] as raw-content prefix
    FLOAT_BZ2 = 6  # FLOAT with bzip2 instead of zstd: smaller on sparse (int8) residuals
    SPARSE = 7  # FLOAT with the residual as (skip, value) symbols: mostly-unchanged int8


@dataclass(frozen=True)
class DeltaLimits:
    """Caps the device applies to declared sizes before allocating anything."""

    max_chunk_size: int = 8 << 20
    max_source_span: int = 32 << 20
    max_header_size: int = 64 << 10
    max_chunks: int = 1 << 22
    max_target_size: int = 1 << 40


DEFAULT_LIMITS = DeltaLimits()


@dataclass(frozen=True)
class DeltaHeader:
    """What the delta turns into what: checked against the old file and the manifest."""

    chunk_size: int
    chunks: int
    base_size: int
    base_sha256: str | None  # None: a compressed full artifact, no base needed
    target_size: int
    target_sha256: str

    def to_bytes(self) -> bytes:
        body = canonical_json(
            {
                "format": "ferry-delta",
                "version": FORMAT_VERSION,
                "chunk_size": self.chunk_size,
                "chunks": self.chunks,
                "base_size": self.base_size,
                "base_sha256": self.base_sha256,
                "target_size": self.target_size,
                "target_sha256": self.target_sha256,
            }
        )
        return HEADER_PREFIX.pack(MAGIC, len(body)) + body

    @classmethod
    def parse(cls, body: bytes, limits: DeltaLimits) -> DeltaHeader:
        """Validate the JSON header; sizes against ``limits``."""
        try:
            data: Any = parse_json(body)
        except MalformedError as exc:
            raise DeltaCorruptError(f"delta header: {exc}") from exc
        if not isinstance(data, dict) or set(data) != _HEADER_KEYS:
            raise DeltaCorruptError("delta header does not have the expected fields")
        if data["format"] != "ferry-delta" or data["version"] != FORMAT_VERSION:
            raise DeltaUnsupportedError(f"delta format {data['format']!r} v{data['version']!r}")
        header = cls(
            chunk_size=_uint(data, "chunk_size"),
            chunks=_uint(data, "chunks"),
            base_size=_uint(data, "base_size"),
            base_sha256=_digest(data, "base_sha256", optional=True),
            target_size=_uint(data, "target_size"),
            target_sha256=str(_digest(data, "target_sha256", optional=False)),
        )
        header.check_limits(limits)
        return header

    def check_limits(self, limits: DeltaLimits) -> None:
        if not 1 <= self.chunk_size <= limits.max_chunk_size:
            raise DeltaTooLargeError(
                f"chunk size {self.chunk_size} is outside 1..{limits.max_chunk_size}"
            )
        if self.chunks > limits.max_chunks:
            raise DeltaTooLargeError(f"{self.chunks} chunks exceed the limit {limits.max_chunks}")
        if self.target_size > limits.max_target_size:
            raise DeltaTooLargeError(f"target of {self.target_size} bytes exceeds the limit")
        if self.chunks * self.chunk_size < self.target_size:
            raise DeltaCorruptError("the chunks cannot cover the declared target size")


def _uint(data: dict[str, Any], key: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DeltaCorruptError(f"delta header: {key} must be a non-negative integer")
    return value


def _digest(data: dict[str, Any], key: str, *, optional: bool) -> str | None:
    value = data[key]
    if value is None and optional:
        return None
    if not isinstance(value, str) or not _SHA256.match(value):
        raise DeltaCorruptError(f"delta header: {key} must be a lowercase hex sha256")
    return value


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk: where its output goes, how it is made, and what it must hash to."""

    out_offset: int
    out_size: int
    codec: Codec
    op: Op
    width: int
    src_offset: int
    src_len: int
    payload_len: int
    sha256: bytes

    def to_bytes(self) -> bytes:
        param = (int(self.op) << 4) | self.width
        return RECORD.pack(
            self.out_offset, self.out_size, self.codec, param,
            self.src_offset, self.src_len, self.payload_len, self.sha256,
        )  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> ChunkRecord:
        """Decode the fixed-size record; semantic checks are the decoder's."""
        out_offset, out_size, codec, param, src_offset, src_len, payload_len, digest = (
            RECORD.unpack(raw)
        )
        try:
            codec_value, op = Codec(codec), Op(param >> 4)
        except ValueError as exc:
            raise DeltaUnsupportedError(f"unknown chunk codec {codec} / param {param}") from exc
        width = param & 0x0F
        if width not in WIDTHS:
            raise DeltaCorruptError(f"chunk lane width {width} is not one of {WIDTHS}")
        return cls(
            out_offset, out_size, codec_value, op, width, src_offset, src_len, payload_len, digest
        )


def payload_cap(out_size: int) -> int:
    """Largest payload a chunk may carry: zstd's worst case for raw bytes, plus slack.

    The encoder always has plain zstd as a candidate, so a smaller winner never
    exceeds this; a larger declared payload is forged.
    """
    return out_size + out_size // 64 + 4096
