"""Read a delta's header and chunk records without decoding anything: what ``ferry delta
inspect`` and a rollout plan show (sizes, codec per chunk).

The same checks as the decoder's first steps (magic, header limits, record order and
sizes), so a forged or truncated patch is refused with the decoder's error codes;
payloads are skipped, never read into memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ferry.protocol.delta._errors import DeltaCorruptError, DeltaTooLargeError, DeltaTruncatedError
from ferry.protocol.delta._format import (
    DEFAULT_LIMITS,
    HEADER_PREFIX,
    MAGIC,
    RECORD,
    ChunkRecord,
    DeltaHeader,
    DeltaLimits,
    payload_cap,
)


@dataclass(frozen=True)
class DeltaIndex:
    """A delta file's header and records, in order."""

    size: int
    header: DeltaHeader
    records: list[ChunkRecord]


def read_index(path: str | os.PathLike[str], limits: DeltaLimits = DEFAULT_LIMITS) -> DeltaIndex:
    """Header and records of a Ferry delta file; ``DeltaError`` if it is not a valid one."""
    size = Path(path).stat().st_size
    with open(path, "rb") as handle:
        fd = handle.fileno()
        prefix = os.pread(fd, HEADER_PREFIX.size, 0)
        if len(prefix) < HEADER_PREFIX.size:
            raise DeltaTruncatedError("delta ends inside the header")
        magic, header_len = HEADER_PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise DeltaCorruptError("not a Ferry delta (bad magic)")
        if header_len > limits.max_header_size:
            raise DeltaTooLargeError(f"delta header of {header_len} bytes exceeds the limit")
        body = os.pread(fd, header_len, HEADER_PREFIX.size)
        if len(body) < header_len:
            raise DeltaTruncatedError("delta ends inside the header")
        header = DeltaHeader.parse(body, limits)
        records = _records(fd, size, HEADER_PREFIX.size + header_len, header)
    return DeltaIndex(size, header, records)


def _records(fd: int, size: int, position: int, header: DeltaHeader) -> list[ChunkRecord]:
    records: list[ChunkRecord] = []
    written = 0
    for index in range(header.chunks):
        raw = os.pread(fd, RECORD.size, position)
        if len(raw) < RECORD.size:
            raise DeltaTruncatedError(f"delta ends inside the record of chunk {index}")
        record = ChunkRecord.parse(raw)
        if record.out_offset != written or not 1 <= record.out_size <= header.chunk_size:
            raise DeltaCorruptError(f"chunk {index} is out of order or oversized")
        if record.payload_len > payload_cap(record.out_size):
            raise DeltaTooLargeError(f"chunk {index} declares a {record.payload_len}-byte payload")
        position += RECORD.size + record.payload_len
        if position > size:
            raise DeltaTruncatedError(f"delta ends inside the payload of chunk {index}")
        written += record.out_size
        records.append(record)
    if written != header.target_size:
        raise DeltaCorruptError(f"chunks make {written} bytes, header says {header.target_size}")
    if position != size:
        raise DeltaCorruptError("delta has bytes after its last chunk")
    return records
