"""Webhooks: delivered to a real HTTP receiver with an HMAC signature, retried, given up."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.server.conftest import API, Harness
from tests.support.metrics import parse, value

SECRET = "s3cret-for-tests"


@dataclass
class Receiver:
    """Answers with the next status from ``script`` (then 200) and records requests."""

    script: list[int]
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def receiver_factory() -> Iterator[Callable[[list[int]], Receiver]]:
    servers: list[ThreadingHTTPServer] = []

    def start(script: list[int]) -> Receiver:
        receiver = Receiver(list(script))

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(({k: v for k, v in self.headers.items()}, body))
                status = receiver.script.pop(0) if receiver.script else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        return receiver

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _fast_worker(harness_factory: Callable[..., Harness], attempts: int = 4) -> Harness:
    h = harness_factory(
        start_webhook_worker=True,
        webhook_backoff_seconds=0.05,
        webhook_poll_seconds=0.05,
        webhook_max_attempts=attempts,
    )
    h.namespace()
    h.model()
    return h


def _subscribe(h: Harness, url: str, events: list[str]) -> int:
    r = h.client.post(
        f"{API}/webhooks", json={"url": url, "events": events, "secret": SECRET}, headers=h.admin
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _wait_for(h: Harness, hook: int, status: str, count: int = 1) -> list[dict]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = h.client.get(f"{API}/webhooks/{hook}/deliveries", headers=h.admin).json()
        if sum(1 for r in rows if r["status"] == status) >= count:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"no {status} delivery: {rows}")


def _wait_for_metric(h: Harness, outcome: str, expected: float) -> None:
    """The counter follows the row's commit by a moment."""
    deadline, seen = time.monotonic() + 10, None
    while time.monotonic() < deadline:
        seen = value(
            parse(h.client.get("/metrics").text), "ferry_webhook_deliveries_total", outcome=outcome
        )
        if seen == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"ferry_webhook_deliveries_total{{outcome={outcome}}} is {seen}")


def test_delivery_is_signed_and_retried_until_it_succeeds(
    harness_factory: Callable[..., Harness], receiver_factory: Callable[[list[int]], Receiver]
) -> None:
    h = _fast_worker(harness_factory)
    receiver = receiver_factory([500, 503])
    hook = _subscribe(h, receiver.url, ["version.created"])
    h.register()
    rows = _wait_for(h, hook, "delivered")
    assert rows[0]["attempts"] == 3 and rows[0]["event_type"] == "version.created"
    assert len(receiver.requests) == 3
    headers, body = receiver.requests[-1]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Ferry-Signature"] == expected
    assert headers["X-Ferry-Event"] == "version.created"
    event = json.loads(body)
    assert event["type"] == "version.created"
    assert event["data"]["model"] == "resnet" and event["data"]["version"] == 1
    _wait_for_metric(h, "delivered", 1)
    _wait_for_metric(h, "failed", 2)


def test_delivery_gives_up_after_max_attempts(
    harness_factory: Callable[..., Harness], receiver_factory: Callable[[list[int]], Receiver]
) -> None:
    h = _fast_worker(harness_factory, attempts=3)
    receiver = receiver_factory([500] * 10)
    hook = _subscribe(h, receiver.url, ["version.created"])
    h.register()
    rows = _wait_for(h, hook, "failed")
    assert rows[0]["attempts"] == 3 and rows[0]["last_error"] == "HTTP 500"
    assert len(receiver.requests) == 3
    _wait_for_metric(h, "gave_up", 1)
    _wait_for_metric(h, "failed", 2)


def test_only_subscribed_events_are_sent(
    harness_factory: Callable[..., Harness], receiver_factory: Callable[[list[int]], Receiver]
) -> None:
    h = _fast_worker(harness_factory)
    stage_receiver = receiver_factory([])
    hook = _subscribe(h, stage_receiver.url, ["stage.changed"])
    h.register()
    h.client.post(
        f"{API}/models/vision/resnet/versions/1/stage", json={"stage": "Staging"}, headers=h.admin
    )
    rows = _wait_for(h, hook, "delivered")
    assert [r["event_type"] for r in rows] == ["stage.changed"]
    data = json.loads(stage_receiver.requests[0][1])["data"]
    assert (data["from"], data["to"], data["target"]) == ("None", "Staging", "vision/resnet@1")


def test_unknown_event_is_refused(h: Harness) -> None:
    r = h.client.post(
        f"{API}/webhooks",
        json={"url": "http://127.0.0.1:9/x", "events": ["nope"], "secret": SECRET},
        headers=h.admin,
    )
    assert r.status_code == 422
