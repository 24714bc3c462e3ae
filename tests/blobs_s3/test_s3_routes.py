"""The blob routes on the S3 backend: authorise, then redirect (or stream) from the bucket."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from ferry.server.core.settings import BlobSettings
from tests.blobs_s3.conftest import other
from tests.server.conftest import API, Harness
from tests.support.s3 import MotoServer, free_port

Factory = Callable[..., Harness]


def _upload(h: Harness, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    r = h.client.put(f"{API}/blobs/{sha}", content=data, headers=h.admin)
    assert r.status_code == 201, r.text
    return sha


def test_download_redirects_to_a_short_lived_presigned_url(
    harness_factory: Factory, settings: BlobSettings, moto: MotoServer, bucket: str
) -> None:
    h = harness_factory(blobs=other(settings, presign_expiry_s=90))
    data = os.urandom(70_000)
    sha = _upload(h, data)
    assert moto.keys(bucket) == [f"blobs/{sha[:2]}/{sha[2:]}"]
    r = h.client.get(f"{API}/blobs/{sha}", headers=h.admin, follow_redirects=False)
    assert r.status_code == 307 and r.headers["cache-control"] == "no-store"
    location = r.headers["location"]
    assert location.startswith(moto.url)
    assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["90"]
    assert httpx.get(location).content == data
    head = h.client.head(f"{API}/blobs/{sha}", headers=h.admin)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))


def test_no_redirect_without_authorisation_or_for_unknown_blobs(
    harness_factory: Factory, settings: BlobSettings
) -> None:
    h = harness_factory(blobs=settings)
    sha = _upload(h, b"secret weights")
    anonymous = h.client.get(f"{API}/blobs/{sha}", follow_redirects=False)
    assert anonymous.status_code == 401 and "location" not in anonymous.headers
    unknown = h.client.get(f"{API}/blobs/{'0' * 64}", headers=h.admin, follow_redirects=False)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_with_redirects_off_the_server_streams_ranges_from_the_bucket(
    harness_factory: Factory, settings: BlobSettings
) -> None:
    h = harness_factory(blobs=other(settings, redirect=False))
    data = os.urandom(3 * 1024 * 1024 + 11)
    sha = _upload(h, data)
    full = h.client.get(f"{API}/blobs/{sha}", headers=h.admin)
    assert full.status_code == 200 and full.content == data
    for header, expected in [
        ("bytes=10-19", data[10:20]),
        ("bytes=-5", data[-5:]),
        (f"bytes={len(data) - 3}-", data[-3:]),
    ]:
        part = h.client.get(f"{API}/blobs/{sha}", headers={**h.admin, "Range": header})
        assert part.status_code == 206 and part.content == expected, header
        assert part.headers["content-length"] == str(len(expected))
    outside = h.client.get(f"{API}/blobs/{sha}", headers={**h.admin, "Range": "bytes=999999999-"})
    assert outside.status_code == 416


def test_a_mismatched_upload_is_a_400_and_leaves_the_bucket_empty(
    harness_factory: Factory, settings: BlobSettings, moto: MotoServer, bucket: str
) -> None:
    h = harness_factory(blobs=settings)
    r = h.client.put(
        f"{API}/blobs/{'a' * 64}", content=os.urandom(6 * 1024 * 1024), headers=h.admin
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "digest_mismatch"
    assert moto.keys(bucket) == [] and moto.pending_uploads(bucket) == []


@pytest.mark.parametrize("problem", ["missing bucket", "unreachable endpoint"])
def test_a_store_that_is_not_there_is_a_readiness_reason_and_503s(
    harness_factory: Factory, settings: BlobSettings, problem: str
) -> None:
    broken = (
        other(settings, s3_bucket="ferry-absent")
        if problem == "missing bucket"
        else other(settings, s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    )
    h = harness_factory(blobs=broken)
    ready = h.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["blobs"].startswith(
        "s3 bucket 'ferry-absent'" if problem == "missing bucket" else "s3 store unreachable"
    )
    data = b"weights"
    sha = hashlib.sha256(data).hexdigest()
    r = h.client.put(f"{API}/blobs/{sha}", content=data, headers=h.admin)
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
    if problem == "unreachable endpoint":  # (S3 answers HEAD in a missing bucket with a bare 404)
        r = h.client.get(f"{API}/blobs/{sha}", headers=h.admin)
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
