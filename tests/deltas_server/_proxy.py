"""A pass-through HTTP proxy in a thread that keeps the status reports devices send.

The server keeps no ``bytes_downloaded`` per report, so an end-to-end test puts
this between a real agent and a real server to read the agent's own reports.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from ferry.protocol import endpoints

_HOP = {"connection", "keep-alive", "transfer-encoding"}
_REQUEST_HOP = {*_HOP, "host", "content-length"}  # httpx sets both for the upstream


class RecordingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.reports: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> RecordingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, body: bytes) -> None:
        with self._lock:
            self.reports.extend(json.loads(body).get("reports", []))

    def report(self, state: str, to_version: int) -> dict[str, Any] | None:
        with self._lock:
            return next(
                (
                    r
                    for r in self.reports
                    if r.get("state") == state and r.get("to_version") == to_version
                ),
                None,
            )


def _handler(proxy: RecordingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.command == "POST" and self.path == endpoints.STATUS:
                proxy.record(body)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _REQUEST_HOP}
            with (
                httpx.Client(base_url=proxy.upstream, timeout=30) as client,
                client.stream(self.command, self.path, content=body, headers=headers) as response,
            ):
                self.send_response(response.status_code)
                for key, value in response.headers.multi_items():
                    if key.lower() not in _HOP:
                        self.send_header(key, value)
                self.send_header("Connection", "close")  # the body ends when the socket does
                self.end_headers()
                self.close_connection = True
                if self.command != "HEAD":
                    for chunk in response.iter_raw():
                        self.wfile.write(chunk)

        do_GET = do_POST = do_PUT = do_HEAD = _forward

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler
