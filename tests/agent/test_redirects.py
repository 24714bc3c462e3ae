"""Downloads that the server answers with a 307 to another origin (a presigned store URL).

Two real HTTP servers: the "registry" authorises and redirects, the "store" serves
bytes and records what it was sent. The device credential must never reach the
store; the Range of a resumed download must.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from ferry.agent.errors import ServerUnreachableError
from ferry.agent.transport import DeviceApi

BLOB = bytes(range(256)) * 40
SHA = "ab" * 32
LOOP = "00" * 32


class _Store(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        start = 0
        if (spec := self.headers.get("Range")) is not None:
            start = int(spec.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB) - start))
        self.end_headers()
        self.wfile.write(BLOB[start:])

    def log_message(self, *_: object) -> None:
        pass


def _registry(store_url: str) -> type[BaseHTTPRequestHandler]:
    class Registry(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != "Bearer device-secret":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(307)
            if LOOP in self.path:  # a hostile or broken server: redirects to itself forever
                self.send_header("Location", self.path)
            else:
                self.send_header("Location", f"{store_url}/bucket/object?X-Amz-Signature=abc")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    return Registry


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def transport() -> Iterator[DeviceApi]:
    _Store.seen = []
    store, store_url = _serve(_Store)
    registry, registry_url = _serve(_registry(store_url))
    client = DeviceApi(registry_url, "device-secret")
    try:
        yield client
    finally:
        client.close()
        for server in (store, registry):
            server.shutdown()
            server.server_close()


def test_a_redirected_blob_is_fetched_without_the_device_credential(
    transport: DeviceApi,
) -> None:
    with transport.blob(SHA, 0, 4096) as (offset, chunks):
        body = b"".join(chunks)
    assert offset == 0 and body == BLOB
    (sent,) = _Store.seen
    assert "authorization" not in sent


def test_a_resumed_download_keeps_its_range_across_the_redirect(
    transport: DeviceApi,
) -> None:
    with transport.blob(SHA, 1000, 4096) as (offset, chunks):
        body = b"".join(chunks)
    assert offset == 1000 and body == BLOB[1000:]
    (sent,) = _Store.seen
    assert sent["range"] == "bytes=1000-" and "authorization" not in sent


def test_a_redirected_delta_is_followed_too(transport: DeviceApi) -> None:
    with transport.delta("cd" * 32, SHA, 4096) as chunks:
        assert b"".join(chunks) == BLOB
    assert "authorization" not in _Store.seen[0]


def test_a_redirect_loop_is_a_transient_error_not_a_hang(transport: DeviceApi) -> None:
    with (
        pytest.raises(ServerUnreachableError, match="TooManyRedirects"),
        transport.blob(LOOP, 0, 4096) as (_, chunks),
    ):
        b"".join(chunks)
    assert _Store.seen == []
