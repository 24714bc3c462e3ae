"""S3BlobStore against a real S3 HTTP server (moto): what the store promises, on S3's terms.

Only what real S3 guarantees is relied on: an object appears at its key at
PutObject or CompleteMultipartUpload and not before, aborted multipart uploads
leave nothing, ranged GETs, presigned GETs. moto does not enforce the expiry of a
presigned URL, so the tests read the signed expiry from the URL instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from ferry.server.blobs.s3 import S3BlobStore
from ferry.server.core.blobs import BlobMissingError
from ferry.server.core.errors import (
    DigestMismatchError,
    PayloadTooLargeError,
    StoreUnavailableError,
)
from ferry.server.core.settings import BlobSettings
from tests.blobs_s3.conftest import other
from tests.support.s3 import MotoServer, free_port

MIB = 1024 * 1024
LIMIT = 1 << 40


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _put(store: S3BlobStore, sha256: str, data: bytes, max_bytes: int = LIMIT) -> object:
    return asyncio.run(store.put_stream(sha256, _chunks(data), max_bytes))


def _read(store: S3BlobStore, sha256: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join(store.read_range(sha256, start, end))


@pytest.mark.parametrize("size", [0, 1000, 12 * MIB + 7], ids=["empty", "small", "multipart"])
def test_put_is_visible_whole_and_dedups(
    store: S3BlobStore, moto: MotoServer, bucket: str, size: int
) -> None:
    data = os.urandom(size)
    sha = _sha(data)
    first = _put(store, sha, data)
    assert first.created and first.size == size  # type: ignore[attr-defined]
    assert store.size(sha) == size and _read(store, sha) == data
    again = _put(store, sha, data)
    assert not again.created  # type: ignore[attr-defined]
    assert moto.keys(bucket) == [store.key(sha)]
    assert moto.pending_uploads(bucket) == []


@pytest.mark.parametrize("size", [1000, 12 * MIB], ids=["small", "multipart"])
def test_bytes_that_do_not_match_their_address_leave_nothing(
    store: S3BlobStore, moto: MotoServer, bucket: str, size: int
) -> None:
    data = os.urandom(size)
    claimed = _sha(data + b"x")
    with pytest.raises(DigestMismatchError):
        _put(store, claimed, data)
    assert store.size(claimed) is None
    assert moto.keys(bucket) == [] and moto.pending_uploads(bucket) == []


def test_an_upload_over_the_limit_is_cut_off_and_aborted(
    store: S3BlobStore, moto: MotoServer, bucket: str
) -> None:
    data = os.urandom(11 * MIB)
    with pytest.raises(PayloadTooLargeError):
        _put(store, _sha(data), data, max_bytes=10 * MIB)
    assert moto.keys(bucket) == [] and moto.pending_uploads(bucket) == []


def test_a_client_that_hangs_up_mid_upload_leaves_nothing(
    store: S3BlobStore, moto: MotoServer, bucket: str
) -> None:
    data = os.urandom(12 * MIB)

    async def hangs_up() -> AsyncIterator[bytes]:
        async for chunk in _chunks(data[: 11 * MIB]):
            yield chunk
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        asyncio.run(store.put_stream(_sha(data), hangs_up(), LIMIT))
    assert moto.keys(bucket) == [] and moto.pending_uploads(bucket) == []


def test_wrong_bytes_for_a_stored_address_are_refused_and_the_blob_is_untouched(
    store: S3BlobStore, moto: MotoServer, bucket: str
) -> None:
    data = os.urandom(3000)
    sha = _sha(data)
    _put(store, sha, data)
    with pytest.raises(DigestMismatchError):
        _put(store, sha, os.urandom(3000))
    assert _read(store, sha) == data


def test_ranges_read_exactly_the_bytes_asked_for(store: S3BlobStore) -> None:
    data = os.urandom(3 * MIB + 5)
    sha = _sha(data)
    _put(store, sha, data)
    for start, end in [(0, 1), (10, 20), (MIB - 1, 2 * MIB + 3), (len(data) - 5, None), (7, 7)]:
        assert _read(store, sha, start, end) == data[start:end]
    with pytest.raises(BlobMissingError):
        _read(store, "0" * 64)


def test_upload_memory_stays_flat(store: S3BlobStore) -> None:
    """48 MiB in 5 MiB parts: the peak is a few parts, not the blob."""
    total = 48 * MIB
    piece = os.urandom(MIB)
    hasher = hashlib.sha256()
    for _ in range(total // MIB):
        hasher.update(piece)

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(total // MIB):
            yield piece

    tracemalloc.start()
    try:
        result = asyncio.run(store.put_stream(hasher.hexdigest(), stream(), LIMIT))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.created and result.size == total
    assert peak < 4 * 5 * MIB, f"peak {peak / MIB:.1f} MiB for a {total // MIB} MiB upload"


def test_presigned_url_serves_the_blob_and_ranges_with_the_signed_expiry(
    store: S3BlobStore,
) -> None:
    data = os.urandom(5000)
    sha = _sha(data)
    _put(store, sha, data)
    url = store.presigned_url(sha, 120)
    assert url is not None
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["120"] and "X-Amz-Signature" in query
    assert httpx.get(url).content == data
    ranged = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == data[100:200]


def test_presigned_urls_name_the_public_endpoint_when_one_is_set(
    settings: BlobSettings, moto: MotoServer
) -> None:
    public = f"http://localhost:{moto.port}"
    store = S3BlobStore(other(settings, presign_endpoint_url=public))
    data = b"public"
    _put(store, _sha(data), data)
    url = store.presigned_url(_sha(data), 60)
    assert url is not None and url.startswith(public + "/")
    assert httpx.get(url).content == data
    store.close()


def test_records_and_files_round_trip(store: S3BlobStore, tmp_path: Path) -> None:
    assert store.get_record("deltas/a/b.json") is None
    store.put_record("deltas/a/b.json", b'{"x":1}')
    store.put_record("deltas/a/b.json", b'{"x":2}')
    assert store.get_record("deltas/a/b.json") == b'{"x":2}'
    with pytest.raises(ValueError):
        store.put_record("../escape", b"")
    data = os.urandom(11 * MIB)
    source = tmp_path / "delta.bin"
    source.write_bytes(data)
    assert store.put_file(_sha(data), source).created
    assert not store.put_file(_sha(data), source).created
    with store.local_copy(_sha(data), tmp_path / "work") as copy:
        assert copy.read_bytes() == data
    assert not copy.exists()


def test_a_missing_bucket_is_named_by_the_readiness_check(
    settings: BlobSettings,
) -> None:
    store = S3BlobStore(other(settings, s3_bucket="ferry-no-such-bucket"))
    assert store.unavailable() == "s3 bucket 'ferry-no-such-bucket' does not exist"
    store.close()


def test_an_unreachable_endpoint_is_a_reason_and_a_503_not_a_crash(
    settings: BlobSettings,
) -> None:
    store = S3BlobStore(other(settings, s3_endpoint_url=f"http://127.0.0.1:{free_port()}"))
    reason = store.unavailable()
    assert reason is not None and reason.startswith("s3 store unreachable")
    with pytest.raises(StoreUnavailableError):
        store.size("a" * 64)
    store.close()


def test_the_store_is_ready_when_the_bucket_exists(store: S3BlobStore) -> None:
    assert store.unavailable() is None


def test_credentials_the_store_refuses_are_named_by_the_readiness_check(
    tmp_path: Path, s3_env: None
) -> None:
    """moto checks credentials only in its IAM mode: every request must then be signed by
    a key IAM knows, and ours is unknown to it — as a revoked key is to S3."""
    strict = MotoServer(tmp_path / "moto.log", extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    strict.start()
    try:
        settings = BlobSettings(backend="s3", s3_endpoint_url=strict.url, s3_bucket="models")
        store = S3BlobStore(settings)
        reason = store.unavailable()
        assert reason is not None and reason.startswith("s3 refused the credentials"), reason
        with pytest.raises(StoreUnavailableError):
            store.size("c" * 64)
        store.close()
    finally:
        strict.stop()
