"""Blob upload and download: dedupe, digest mismatch, size limit, HTTP Range."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable

from tests.server.conftest import API, Harness


def _files_under(root) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_upload_is_content_addressed_and_idempotent(h: Harness) -> None:
    data = secrets.token_bytes(300_000)
    sha = hashlib.sha256(data).hexdigest()
    first = h.client.put(f"{API}/blobs/{sha}", content=data, headers=h.admin)
    again = h.client.put(f"{API}/blobs/{sha}", content=data, headers=h.admin)
    assert (first.status_code, first.json()["created"]) == (201, True)
    assert (again.status_code, again.json()["created"]) == (200, False)
    assert _files_under(h.settings.blob_dir) == [f"{sha[:2]}/{sha[2:]}"]
    head = h.client.head(f"{API}/blobs/{sha}", headers=h.admin)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))


def test_digest_mismatch_is_refused_and_nothing_is_kept(h: Harness) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    r = h.client.put(f"{API}/blobs/{wrong}", content=b"the real bytes", headers=h.admin)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "digest_mismatch"
    assert _files_under(h.settings.blob_dir) == []
    assert h.client.head(f"{API}/blobs/{wrong}", headers=h.admin).status_code == 404


def test_upload_over_the_size_limit_is_refused(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory(max_blob_bytes=1000)
    data = b"x" * 1001
    sha = hashlib.sha256(data).hexdigest()
    r = h.client.put(f"{API}/blobs/{sha}", content=data, headers=h.admin)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():  # type: ignore[no-untyped-def]  # no Content-Length: the stream limit applies
        yield data[:600]
        yield data[600:]

    r = h.client.put(f"{API}/blobs/{sha}", content=chunks(), headers=h.admin)
    assert r.status_code == 413
    assert _files_under(h.settings.blob_dir) == []


def test_bad_digest_in_url_is_a_validation_error(h: Harness) -> None:
    r = h.client.put(f"{API}/blobs/NOT-A-DIGEST", content=b"x", headers=h.admin)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


class TestRange:
    data = bytes(range(256)) * 40  # 10240 bytes

    def _get(self, h: Harness, range_header: str | None):  # type: ignore[no-untyped-def]
        sha = h.upload(self.data)
        headers = dict(h.admin)
        if range_header:
            headers["Range"] = range_header
        return sha, h.client.get(f"{API}/blobs/{sha}", headers=headers)

    def test_full_download_has_etag(self, h: Harness) -> None:
        sha, r = self._get(h, None)
        assert r.status_code == 200 and r.content == self.data
        assert r.headers["etag"] == f'"{sha}"' and r.headers["accept-ranges"] == "bytes"

    def test_first_bytes(self, h: Harness) -> None:
        _, r = self._get(h, "bytes=0-99")
        assert r.status_code == 206 and r.content == self.data[:100]
        assert r.headers["content-range"] == f"bytes 0-99/{len(self.data)}"

    def test_resume_from_offset(self, h: Harness) -> None:
        _, r = self._get(h, "bytes=10000-")
        assert r.status_code == 206 and r.content == self.data[10000:]

    def test_suffix(self, h: Harness) -> None:
        _, r = self._get(h, "bytes=-50")
        assert r.status_code == 206 and r.content == self.data[-50:]

    def test_out_of_range_is_416_with_the_size(self, h: Harness) -> None:
        _, r = self._get(h, f"bytes={len(self.data)}-")
        assert r.status_code == 416
        assert r.json()["error"]["code"] == "range_not_satisfiable"
        assert r.headers["content-range"] == f"bytes */{len(self.data)}"

    def test_multi_range_is_answered_with_the_whole_blob(self, h: Harness) -> None:
        _, r = self._get(h, "bytes=0-1,5-6")
        assert r.status_code == 200 and r.content == self.data

    def test_missing_blob_is_404(self, h: Harness) -> None:
        r = h.client.get(f"{API}/blobs/{'a' * 64}", headers=h.admin)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
