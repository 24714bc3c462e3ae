"""HTTP to the server's Device API; httpx errors are translated here, once.

Every response body is read with a cap: a metadata document larger than
``max_document_bytes`` is refused while streaming, and blob reads are capped by
the caller at the size the signed manifest declares.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import httpx

from ferry.agent.errors import (
    DocumentTooLargeError,
    NotFoundError,
    RangeNotSatisfiableError,
    ServerError,
    ServerUnreachableError,
    TransportError,
    UnauthorizedError,
)
from ferry.protocol import endpoints, topics
from ferry.protocol.canonical import parse_json
from ferry.protocol.errors import MalformedError

MAX_REASON = 300  # characters of the server's own message kept in an error


def server_reason(response: httpx.Response) -> str:
    """The server's ``error.message`` (its one JSON error shape), printable and bounded;
    "" when the body is not that shape."""
    try:
        body = parse_json(response.content)
    except (MalformedError, httpx.ResponseNotRead):  # not JSON, or a stream left unread
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        return ""
    return "".join(c if c.isprintable() else " " for c in message)[:MAX_REASON]


def _check_status(response: httpx.Response, what: str) -> None:
    """Map an unsuccessful status onto the agent's transport errors, with the server's
    reason when it gave one (e.g. an enrolment token that is used up)."""
    status = response.status_code
    if status < 400:
        return
    reason = server_reason(response)
    said = f": {reason}" if reason else ""
    if status in (401, 403):
        refused = "the enrolment" if what == "enroll" else "the device credential"
        raise UnauthorizedError(f"{what}: the server refused {refused} ({status}){said}")
    if status == 404:
        raise NotFoundError(f"{what}: not found on the server{said}")
    if status >= 500 or status == 429:
        raise ServerError(f"{what}: server answered {status}{said}")
    raise TransportError(f"{what}: server answered {status}{said}")


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn httpx's exceptions into transient agent errors at the boundary."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ServerUnreachableError(f"{what}: timed out") from exc
    except httpx.HTTPError as exc:
        raise ServerUnreachableError(f"{what}: {type(exc).__name__}: {exc}") from exc


class DeviceApi:
    """The device's view of the server: documents, blobs, deltas and status ingest."""

    def __init__(
        self,
        base_url: str,
        credential: str | None,
        *,
        timeout_s: float = 30.0,
        max_document_bytes: int = 1 << 20,
        verify: str | bool = True,
    ) -> None:
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        if not base_url.startswith("https://"):
            verify = (
                False  # no TLS to verify; skips loading the CA bundle (memory on small devices)
            )
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, verify=verify
        )
        self._max_document = max_document_bytes

    def close(self) -> None:
        self._client.close()

    def _document(self, path: str, what: str, headers: dict[str, str] | None = None) -> bytes:
        """GET a JSON document, refusing it once it grows past the cap."""
        with _translated(what), self._client.stream("GET", path, headers=headers) as response:
            _check_status(response, what)
            body = bytearray()
            for chunk in response.iter_bytes():
                if len(body) + len(chunk) > self._max_document:
                    raise DocumentTooLargeError(f"{what}: larger than {self._max_document} bytes")
                body += chunk
            return bytes(body)

    def keyring(self, version: int | None = None) -> bytes:
        if version is None:
            return self._document(endpoints.KEYRING, "keyring")
        return self._document(
            endpoints.KEYRING_VERSION.format(version=version), f"keyring v{version}"
        )

    def desired_state(self, notice_epoch: int | None = None) -> bytes:
        """``notice_epoch``: the fleet epoch of the last notice (see `topics.NOTICE_EPOCH_HEADER`)."""
        headers = (
            {topics.NOTICE_EPOCH_HEADER: str(notice_epoch)} if notice_epoch is not None else None
        )
        return self._document(endpoints.DESIRED_STATE, "desired state", headers)

    def manifest(self, sha256: str) -> bytes:
        return self._document(endpoints.MANIFEST.format(sha256=sha256), f"manifest {sha256[:12]}")

    @contextmanager
    def blob(
        self, sha256: str, start: int, chunk_bytes: int
    ) -> Iterator[tuple[int, Iterator[bytes]]]:
        """Stream a blob from byte ``start``; yields (offset the body starts at, chunks)."""
        what = f"blob {sha256[:12]}"
        headers = {"Range": f"bytes={start}-"} if start else {}
        with (
            _translated(what),
            self._client.stream(
                "GET", endpoints.BLOB.format(sha256=sha256), headers=headers, follow_redirects=True
            ) as response,
        ):
            if response.status_code == 416:
                raise RangeNotSatisfiableError(f"{what}: range from byte {start} not satisfiable")
            _check_status(response, what)
            offset = start if response.status_code == 206 else 0
            yield offset, _guarded(_pieces(response, chunk_bytes), what)

    @contextmanager
    def delta(
        self, from_sha256: str, to_sha256: str, chunk_bytes: int
    ) -> Iterator[Iterator[bytes]]:
        """Stream the delta between two file digests; NotFoundError when the server has none."""
        what = f"delta {from_sha256[:12]}→{to_sha256[:12]}"
        path = endpoints.DELTA.format(from_sha256=from_sha256, to_sha256=to_sha256)
        with (
            _translated(what),
            self._client.stream("GET", path, follow_redirects=True) as response,
        ):
            _check_status(response, what)
            yield _guarded(_pieces(response, chunk_bytes), what)

    def delta_descriptor(
        self, from_sha256: str, to_sha256: str, *, from_manifest: str, to_manifest: str, path: str
    ) -> bytes:
        """The delta's signed descriptor (a small document: capped like the others)."""
        query = urlencode(
            {"from_manifest": from_manifest, "to_manifest": to_manifest, "path": path}
        )
        url = endpoints.DELTA_DESCRIPTOR.format(from_sha256=from_sha256, to_sha256=to_sha256)
        return self._document(f"{url}?{query}", f"delta descriptor {to_sha256[:12]}")

    def post_status(self, reports: list[dict[str, Any]]) -> set[str]:
        """Send reports; returns the ids the server has now (accepted or already known)."""
        with _translated("status"):
            response = self._client.post(endpoints.STATUS, json={"reports": reports})
        _check_status(response, "status")
        body = parse_json(response.content)
        return set(body.get("accepted", [])) | set(body.get("duplicates", []))

    def enroll(self, body: dict[str, Any]) -> dict[str, Any]:
        with _translated("enroll"):
            response = self._client.post(endpoints.ENROLL, json=body)
        _check_status(response, "enroll")
        result = parse_json(response.content)
        if not isinstance(result, dict):
            raise TransportError("enroll: the server's answer is not a JSON object")
        return result


def _pieces(response: httpx.Response, chunk_bytes: int) -> Iterator[bytes]:
    """The body as the network delivers it, split at ``chunk_bytes`` but never held back.

    ``iter_raw(chunk_size)`` buffers until a whole chunk arrived: a server trickling
    one byte a second would keep the agent waiting inside it, out of reach of the
    download deadline. Each network read (at most 64 KiB in httpcore) is passed on.
    """
    for data in response.iter_raw():
        for start in range(0, len(data), chunk_bytes):
            yield data[start : start + chunk_bytes]


def _guarded(chunks: Iterator[bytes], what: str) -> Iterator[bytes]:
    """Translate errors raised while iterating a body (a connection drop mid-stream)."""
    with _translated(what):
        yield from chunks
