"""Device-facing bodies are refused by size before they are read: a declared
Content-Length over the cap is answered 413 without pulling one byte, and a chunked
body is cut off at the cap while it streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from ferry.server.api.body_limits import DEVICE_BODY_LIMITS
from tests.fleet.harness import API, Fleet, report_doc

STATUS, ENROLL = f"{API}/device/status", f"{API}/device/enroll"
MiB = 1024 * 1024


def _drive(
    app: Any, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, dict[str, Any], int]:
    """Call the ASGI app directly; return the status, the JSON body and how many body bytes
    the app pulled from the client."""
    pulled = 0
    queue = list(chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if not queue:
            return {"type": "http.disconnect"}
        chunk = queue.pop(0)
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), pulled


def _megabyte_chunks(total_mib: int) -> list[bytes]:
    return [b" " * MiB for _ in range(total_mib)]


@pytest.mark.parametrize("path", [STATUS, ENROLL])
def test_a_50_mib_body_with_content_length_is_refused_unread(fleet: Fleet, path: str) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(50 * MiB).encode()),
        (b"authorization", b"Bearer frd_whatever"),
    ]
    status, body, pulled = _drive(fleet.app, path, headers, _megabyte_chunks(50))
    assert status == 413 and pulled == 0
    assert body["error"]["code"] == "payload_too_large"
    assert body["error"]["details"] == {"limit_bytes": DEVICE_BODY_LIMITS[path]}


@pytest.mark.parametrize("path", [STATUS, ENROLL])
def test_a_chunked_body_is_cut_off_at_the_cap_while_streaming(fleet: Fleet, path: str) -> None:
    headers = [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]
    status, body, pulled = _drive(fleet.app, path, headers, _megabyte_chunks(50))
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert pulled <= DEVICE_BODY_LIMITS[path] + MiB  # at most one chunk past the cap


def test_an_oversized_status_batch_over_http_is_413_and_a_normal_one_passes(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    doc = report_doc(agent.device_id, "staged", to_version=1, at="2026-11-25T03:00:00Z")
    huge = {"reports": [{**doc, "detail": "x" * 4096}] * 2000}
    r = fleet.client.post(STATUS, json=huge, headers=agent.headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert fleet.report(agent, "staged", to_version=1)["accepted"]


def test_a_chunked_enrolment_under_the_cap_is_read_whole(fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    raw = json.dumps({"enrollment_token": token, "device_id": "cam-9", "hardware": "x86_64"})

    def chunks() -> Iterator[bytes]:
        data = raw.encode()
        yield from (data[i : i + 7] for i in range(0, len(data), 7))

    r = fleet.client.post(ENROLL, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 201, r.text
