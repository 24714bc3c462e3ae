"""The device side: apply a streamed delta to the old artifact, chunk by chunk.

Memory stays bounded by the chunk size (plus one old source span), never the
model size: each record declares its output, source and payload sizes, which are
checked against :class:`DeltaLimits`, the header and the signed manifest before
anything of that size is read or allocated. Output goes to ``<out>.delta-part`` and is
renamed onto ``out_path`` only after every chunk's sha256 and the whole file's
size and sha256 have matched, so a refused delta leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol, Self, cast

from ferry.protocol.delta._errors import (
    DeltaCorruptError,
    DeltaError,
    DeltaResultMismatchError,
    DeltaTooLargeError,
    DeltaTruncatedError,
    DeltaWrongBaseError,
)
from ferry.protocol.delta._format import (
    DEFAULT_LIMITS,
    HEADER_PREFIX,
    MAGIC,
    RECORD,
    ChunkRecord,
    Codec,
    DeltaHeader,
    DeltaLimits,
    payload_cap,
)
from ferry.protocol.delta.codec import (
    BASE_OPS,
    BASELESS_OPS,
    BSDIFF_MAGIC,
    Op,
    bspatch,
    bz2_decompress,
    restore_planes,
    sparse_decode,
    zstd_decompress,
)

_READ = 64 << 10  # reading a whole-file bsdiff patch: small blocks, checked against its cap
_PENDING = 2  # decoded chunks waiting for the hashing thread (memory: ≤ 2 chunks)
_HASH_BLOCK = 64 << 10  # hashing the old file: one reused buffer, far below any chunk


_LANE_CODECS: dict[Codec, Callable[[bytes, int], bytes | bytearray]] = {
    Codec.FLOAT: zstd_decompress,
    Codec.FLOAT_BZ2: bz2_decompress,
    Codec.SPARSE: sparse_decode,
}  # lane deltas against the aligned base range: how each one's residual is stored


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


DeltaSource = str | os.PathLike[str] | BinaryIO | _Readable | Iterable[bytes]


class _IterReader:
    """Adapts an iterator of byte chunks (e.g. ``httpx.Response.iter_bytes()``) to ``read``."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = bytearray()

    def read(self, size: int = -1, /) -> bytes:
        while len(self._buffer) < size:
            piece = next(self._chunks, None)
            if piece is None:
                break
            self._buffer += piece
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out


class _Stream:
    """Exact reads with a running total, an optional length cap and an optional hash.

    The stream is hashed only when a descriptor's sha256 will be compared: otherwise
    it would be a fourth sha256 pass for nothing (the chunks and the result are
    verified on their own).
    """

    def __init__(self, raw: _Readable, max_size: int | None, hashed: bool) -> None:
        self._raw = raw
        self._max = max_size
        self._hash = hashlib.sha256() if hashed else None
        self.consumed = 0

    def read_exact(self, size: int, what: str) -> bytes:
        if self._max is not None and self.consumed + size > self._max:
            raise DeltaTooLargeError(f"{what} runs past the delta's declared {self._max} bytes")
        parts: list[bytes] = []
        missing = size
        while missing:
            piece = self._raw.read(missing)
            if not piece:
                raise DeltaTruncatedError(f"delta ends inside the {what}")
            parts.append(piece)
            missing -= len(piece)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.consumed += size
        if self._hash is not None:
            self._hash.update(data)
        return data

    def read_rest(self, cap: int, what: str) -> bytes:
        """Everything up to the end of the stream, refused once it exceeds ``cap`` bytes."""
        data = bytearray()
        while piece := self._raw.read(min(_READ, cap + 1 - len(data))):
            data += piece
            if len(data) > cap:
                raise DeltaTooLargeError(f"{what} exceeds {cap} bytes")
        if self._max is not None and self.consumed + len(data) > self._max:
            raise DeltaTooLargeError(f"{what} runs past the delta's declared {self._max} bytes")
        self.consumed += len(data)
        if self._hash is not None:
            self._hash.update(data)
        return bytes(data)

    def at_end(self) -> bool:
        return not self._raw.read(1)

    def sha256(self) -> str | None:
        return None if self._hash is None else self._hash.hexdigest()


def apply_delta_file(
    old_path: str | os.PathLike[str] | None,
    delta: DeltaSource,
    out_path: str | os.PathLike[str],
    expected_size: int,
    expected_sha256: str,
    limits: DeltaLimits = DEFAULT_LIMITS,
    *,
    delta_size: int | None = None,
    delta_sha256: str | None = None,
) -> None:
    """Rebuild the new artifact at ``out_path`` from ``old_path`` and a delta stream.

    ``expected_size``/``expected_sha256`` come from the signed manifest;
    ``delta_size``/``delta_sha256`` from the signed delta descriptor, when known.
    ``old_path`` may be None for a compressed full artifact. Raises a
    :class:`DeltaError` subclass on any refusal, leaving ``out_path`` untouched.
    """
    out = Path(out_path)
    part = out.with_name(out.name + ".delta-part")  # not ".part": that is a resumable download
    try:
        with _open_delta(delta) as raw, open(part, "wb") as sink:
            stream = _Stream(raw, delta_size, hashed=delta_sha256 is not None)
            _apply(stream, old_path, sink, expected_size, expected_sha256, limits)
            if not stream.at_end():
                raise DeltaCorruptError("delta has bytes after its last chunk")
            if delta_size is not None and stream.consumed != delta_size:
                raise DeltaTruncatedError(f"delta is {stream.consumed} of {delta_size} bytes")
            if delta_sha256 is not None and stream.sha256() != delta_sha256:
                raise DeltaCorruptError("delta does not hash to its descriptor's sha256")
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(part, out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


@contextmanager
def _open_delta(delta: DeltaSource) -> Iterator[_Readable]:
    """Something with ``read`` for every accepted delta source; closes what it opened."""
    if isinstance(delta, (bytes, bytearray, memoryview)):
        raise TypeError("pass a delta as a path, a binary stream or an iterable of chunks")
    if isinstance(delta, (str, os.PathLike)):
        with open(delta, "rb") as handle:
            yield handle
    elif hasattr(delta, "read"):
        yield cast(_Readable, delta)
    else:
        yield _IterReader(delta)


def _apply(
    stream: _Stream,
    old_path: str | os.PathLike[str] | None,
    sink: BinaryIO,
    expected_size: int,
    expected_sha256: str,
    limits: DeltaLimits,
) -> None:
    magic, header_len = HEADER_PREFIX.unpack(stream.read_exact(HEADER_PREFIX.size, "header"))
    if magic == BSDIFF_MAGIC:
        _apply_bsdiff40(
            stream, magic, header_len, old_path, sink, expected_size, expected_sha256, limits
        )
        return
    if magic != MAGIC:
        raise DeltaCorruptError("not a Ferry delta (bad magic)")
    if header_len > limits.max_header_size:
        raise DeltaTooLargeError(f"delta header of {header_len} bytes exceeds the limit")
    header = DeltaHeader.parse(stream.read_exact(header_len, "header"), limits)
    if header.target_size != expected_size or header.target_sha256 != expected_sha256:
        raise DeltaResultMismatchError("delta builds another artifact than the manifest describes")
    with _open_base(old_path, header) as (old, base):
        try:
            _apply_chunks(stream, header, old, sink, limits)
        except DeltaError:
            base.require()  # a chunk that failed on the wrong base is a wrong base
            raise
        base.require()


def _open_old(old_path: str | os.PathLike[str]) -> BinaryIO:
    try:
        return open(old_path, "rb")  # the caller's with-statement closes it
    except OSError as exc:
        raise DeltaWrongBaseError(f"old artifact cannot be read: {exc}") from exc


class _BaseCheck:
    """The old artifact's sha256, computed in a thread while the chunks are decoded.

    hashlib releases the GIL on large updates, so on a device with two cores hashing
    the base costs no wall time; ``require`` waits for it and refuses a wrong base.
    Chunks read the base before it is verified, but each chunk and the result are
    verified too, and nothing is renamed into place before ``require`` passes.
    """

    def __init__(self, fd: int | None, expected: str | None) -> None:
        self.expected, self.actual, self.error = expected, "", ""
        self._stop = threading.Event()
        self._thread = None
        if fd is not None:
            self._thread = threading.Thread(target=self._run, args=(fd,), daemon=True)
            self._thread.start()

    def _run(self, fd: int) -> None:
        try:
            self.actual = _sha256_of(fd, self._stop)
        except OSError as exc:
            self.error = str(exc)

    def cancel(self) -> None:
        """Stop hashing (the apply failed for another reason) and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def require(self) -> None:
        if self._thread is None:
            return
        self._thread.join()
        if self.error:
            raise DeltaWrongBaseError(f"old artifact cannot be read: {self.error}")
        if self.actual != self.expected:
            raise DeltaWrongBaseError("old artifact is not the delta's base (sha256 differs)")


@contextmanager
def _open_base(
    old_path: str | os.PathLike[str] | None, header: DeltaHeader
) -> Iterator[tuple[BinaryIO | None, _BaseCheck]]:
    """Open the old artifact, check its size (cheap) and start hashing it (``_BaseCheck``)."""
    if header.base_sha256 is None:
        yield None, _BaseCheck(None, None)
        return
    if old_path is None:
        raise DeltaWrongBaseError("delta needs an old artifact and none was given")
    with _open_old(old_path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size != header.base_size:
            raise DeltaWrongBaseError(
                f"old artifact is {size} bytes, delta base {header.base_size}"
            )
        check = _BaseCheck(handle.fileno(), header.base_sha256)
        try:
            yield handle, check
        finally:
            check.cancel()  # never close the file under the hashing thread


def _sha256_of(fd: int, stop: threading.Event) -> str:
    """Hash a file by ``pread`` through one reused buffer (no shared file position);
    "" when ``stop`` is set first."""
    digest = hashlib.sha256()
    buffer = bytearray(_HASH_BLOCK)
    view = memoryview(buffer)
    offset = 0
    while count := os.preadv(fd, [view], offset):
        if stop.is_set():
            return ""
        digest.update(view[:count])
        offset += count
    return digest.hexdigest()


def _apply_chunks(
    stream: _Stream, header: DeltaHeader, old: BinaryIO | None, sink: BinaryIO, limits: DeltaLimits
) -> None:
    written = 0
    with _OutputCheck(sink) as check:
        for index in range(header.chunks):
            record = ChunkRecord.parse(stream.read_exact(RECORD.size, f"record of chunk {index}"))
            _check_record(record, index, written, header, limits)
            payload = stream.read_exact(record.payload_len, f"payload of chunk {index}")
            source = _read_source(old, record)
            data = decode_chunk(record, payload, source)
            check.put(index, data, record.sha256)
            written += record.out_size
        whole = check.finish()
    if written != header.target_size:
        raise DeltaCorruptError(f"chunks make {written} bytes, header says {header.target_size}")
    if whole != header.target_sha256:
        raise DeltaResultMismatchError("the rebuilt artifact does not match the manifest sha256")


class _OutputCheck:
    """Each chunk's sha256, its write and the whole result's sha256, in a thread
    beside the decoding.

    hashlib and file writes release the GIL, so the main thread only decodes. At
    most ``_PENDING`` decoded chunks wait (bounded memory); a chunk is written only
    once it hashes to its record. A chunk that does not, or a failed write, is
    reported at the next ``put`` (so a bad stream is abandoned within a few
    chunks) and at ``finish``, always before anything is renamed into place.
    """

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self.error: OSError | None = None
        self._queue: queue.Queue[tuple[int, bytes | bytearray, bytes] | None] = queue.Queue(
            maxsize=_PENDING
        )
        self._whole = hashlib.sha256()
        self.failed: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            index, data, expected = item
            if self.failed is not None or self.error is not None:
                continue
            if hashlib.sha256(data).digest() != expected:
                self.failed = index
                continue
            try:
                self._sink.write(data)
            except OSError as exc:
                self.error = exc
                continue
            self._whole.update(data)

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error
        if self.failed is not None:
            raise DeltaCorruptError(f"chunk {self.failed} does not hash to its recorded sha256")

    def put(self, index: int, data: bytes | bytearray, expected: bytes) -> None:
        self._raise_if_failed()
        self._queue.put((index, data, expected))

    def finish(self) -> str:
        """Wait for every pending chunk; the whole result's sha256."""
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()
        return self._whole.hexdigest()


def _check_record(
    record: ChunkRecord, index: int, written: int, header: DeltaHeader, limits: DeltaLimits
) -> None:
    """Every declared size is checked here, before the payload or source is read."""
    where = f"chunk {index}"
    if record.out_offset != written:
        raise DeltaCorruptError(
            f"{where} is out of order (offset {record.out_offset}, expected {written})"
        )
    if not 1 <= record.out_size <= header.chunk_size:
        raise DeltaTooLargeError(
            f"{where} declares {record.out_size} bytes, chunk size {header.chunk_size}"
        )
    if written + record.out_size > header.target_size:
        raise DeltaTooLargeError(f"{where} runs past the {header.target_size}-byte target")
    if record.payload_len > payload_cap(record.out_size):
        raise DeltaTooLargeError(f"{where} declares a {record.payload_len}-byte payload")
    if record.codec is Codec.ZSTD:
        if record.src_len or record.src_offset or record.op not in BASELESS_OPS:
            raise DeltaCorruptError(f"{where}: a zstd chunk has no source and no base lane op")
        return
    if header.base_sha256 is None:
        raise DeltaCorruptError(f"{where} refers to an old artifact but the delta has no base")
    aligned = record.codec in (Codec.COPY, *_LANE_CODECS)
    if aligned and record.src_len != record.out_size:
        raise DeltaCorruptError(f"{where}: aligned source length differs from the output")
    if record.src_len > limits.max_source_span:
        raise DeltaTooLargeError(f"{where} reads a {record.src_len}-byte source span")
    if record.src_offset + record.src_len > header.base_size:
        raise DeltaCorruptError(f"{where} reads beyond the end of the old artifact")
    if record.codec is Codec.COPY and record.payload_len:
        raise DeltaCorruptError(f"{where}: a copy carries no payload")
    lane_delta = record.codec in _LANE_CODECS
    if (record.op not in BASE_OPS) if lane_delta else (record.op is not Op.NONE):
        raise DeltaCorruptError(
            f"{where}: lane operation {record.op.name} does not fit {record.codec.name}"
        )


def _read_source(old: BinaryIO | None, record: ChunkRecord) -> bytes | None:
    """The record's base range, in one ``pread`` (no seek, no copy through a buffer)."""
    if record.codec is Codec.ZSTD or old is None:
        return None
    data = os.pread(old.fileno(), record.src_len, record.src_offset)
    if len(data) != record.src_len:
        raise DeltaWrongBaseError("old artifact changed while the delta was applied")
    return data


def decode_chunk(record: ChunkRecord, payload: bytes, source: bytes | None) -> bytes | bytearray:
    """One chunk's output (not yet verified: the caller checks its sha256)."""
    size = record.out_size
    if record.codec is Codec.COPY:
        assert source is not None
        return source
    if record.codec is Codec.ZSTD:
        return restore_planes(zstd_decompress(payload, size), None, record.op, record.width)
    assert source is not None
    if record.codec in _LANE_CODECS:
        unpack = _LANE_CODECS[record.codec]
        return restore_planes(unpack(payload, size), source, record.op, record.width)
    if record.codec is Codec.ZSTD_REF:
        return zstd_decompress(payload, size, source)
    return bspatch(source, payload, size)


def _apply_bsdiff40(
    stream: _Stream,
    magic: bytes,
    header_word: int,
    old_path: str | os.PathLike[str] | None,
    sink: BinaryIO,
    expected_size: int,
    expected_sha256: str,
    limits: DeltaLimits,
) -> None:
    """A plain whole-file BSDIFF40 (the C ``bspatch`` interop format), for small artifacts.

    bsdiff needs the whole old and new file in memory, so it is accepted only up to
    ``limits.max_chunk_size`` of output; larger artifacts use the chunked container.
    """
    if expected_size > limits.max_chunk_size:
        raise DeltaTooLargeError(
            f"a whole-file bsdiff for {expected_size} bytes exceeds the chunk limit"
        )
    if old_path is None:
        raise DeltaWrongBaseError("a bsdiff patch needs the old artifact")
    with open(old_path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size > limits.max_source_span:
            raise DeltaTooLargeError("old artifact is too large for a whole-file bsdiff")
        source = handle.read()
    head = magic + header_word.to_bytes(4, "big")
    patch = head + stream.read_rest(limits.max_source_span, "bsdiff patch")
    data = bspatch(source, patch, expected_size)
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise DeltaResultMismatchError(
            "bsdiff patch does not build the manifest's artifact (wrong base?)"
        )
    sink.write(data)
