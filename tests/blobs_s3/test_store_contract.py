"""The BlobStore contract, run against both implementations: the local folder and S3 (moto).

Content addressing, dedup, atomic visibility (nothing at the address after a
mismatch, an oversized or an interrupted upload), ranges, records and local copies
hold the same way on both; only the S3 store can presign.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ferry.server.blobs.s3 import S3BlobStore
from ferry.server.blobs.store import LocalBlobStore
from ferry.server.core.blobs import BlobMissingError, BlobStore, PutResult
from ferry.server.core.errors import DigestMismatchError, PayloadTooLargeError
from ferry.server.core.settings import BlobSettings

MIB = 1024 * 1024
LIMIT = 1 << 40


@pytest.fixture(params=["local", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    store: BlobStore
    if request.param == "local":
        store = LocalBlobStore(tmp_path / "blobs")
    else:
        settings: BlobSettings = request.getfixturevalue("settings")
        store = S3BlobStore(settings)
    try:
        yield store
    finally:
        store.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _chunks(data: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 512 * 1024):
        if fail_after is not None and start >= fail_after:
            raise ConnectionResetError("client went away")
        yield data[start : start + 512 * 1024]


def _put(store: BlobStore, sha: str, data: bytes, **kw: object) -> PutResult:
    fail_after = kw.pop("fail_after", None)
    limit = int(kw.pop("max_bytes", LIMIT))  # type: ignore[call-overload]
    return asyncio.run(store.put_stream(sha, _chunks(data, fail_after), limit))  # type: ignore[arg-type]


def _read(store: BlobStore, sha: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join(store.read_range(sha, start, end))


def test_put_then_read_whole_and_in_ranges(blob_store: BlobStore) -> None:
    data = os.urandom(6 * MIB + 3)
    sha = _sha(data)
    assert not blob_store.exists(sha)
    assert _put(blob_store, sha, data) == PutResult(sha, len(data), True)
    assert blob_store.size(sha) == len(data) and _read(blob_store, sha) == data
    for start, end in [(0, 10), (MIB - 3, 3 * MIB), (len(data) - 1, None)]:
        assert _read(blob_store, sha, start, end) == data[start:end]


def test_same_bytes_twice_is_idempotent(blob_store: BlobStore) -> None:
    data = os.urandom(1000)
    first, second = _put(blob_store, _sha(data), data), _put(blob_store, _sha(data), data)
    assert first.created and not second.created and second.size == 1000


@pytest.mark.parametrize(
    "failure",
    ["digest mismatch", "over the limit", "client hangs up"],
)
def test_a_failed_upload_leaves_nothing_at_the_address(blob_store: BlobStore, failure: str) -> None:
    data = os.urandom(7 * MIB)
    sha = _sha(data)
    expected: type[BaseException]
    if failure == "digest mismatch":
        sha, expected, kw = _sha(data + b"!"), DigestMismatchError, {}
    elif failure == "over the limit":
        expected, kw = PayloadTooLargeError, {"max_bytes": 6 * MIB}
    else:
        expected, kw = ConnectionResetError, {"fail_after": 6 * MIB}
    with pytest.raises(expected):
        _put(blob_store, sha, data, **kw)
    assert blob_store.size(sha) is None and blob_store.local_file(sha) is None
    with pytest.raises(BlobMissingError):
        _read(blob_store, sha)
    if isinstance(blob_store, LocalBlobStore):  # no temp file left behind either
        assert not [p for p in blob_store.root.rglob("*") if p.is_file()]


def test_records_are_replaced_whole_and_names_are_checked(blob_store: BlobStore) -> None:
    assert blob_store.get_record("deltas/a/b.json") is None
    blob_store.put_record("deltas/a/b.json", b"one")
    blob_store.put_record("deltas/a/b.json", b"two")
    assert blob_store.get_record("deltas/a/b.json") == b"two"
    for bad in ("../x", "deltas/../../x", "/abs", "UPPER", ""):
        with pytest.raises(ValueError):
            blob_store.put_record(bad, b"")


def test_put_file_and_local_copy(blob_store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(2 * MIB)
    source = tmp_path / "built.delta"
    source.write_bytes(data)
    assert blob_store.put_file(_sha(data), source).created
    with blob_store.local_copy(_sha(data), tmp_path / "work") as copy:
        assert copy.read_bytes() == data
    assert _read(blob_store, _sha(data)) == data  # a local copy never consumes the blob
    with pytest.raises(BlobMissingError), blob_store.local_copy("e" * 64, tmp_path / "work"):
        pass
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]


def test_only_a_remote_store_presigns_and_only_a_local_one_has_files(
    blob_store: BlobStore,
) -> None:
    data = b"x" * 100
    _put(blob_store, _sha(data), data)
    url, local = blob_store.presigned_url(_sha(data), 60), blob_store.local_file(_sha(data))
    if isinstance(blob_store, LocalBlobStore):
        assert url is None and local is not None and local.read_bytes() == data
    else:
        assert url is not None and local is None
