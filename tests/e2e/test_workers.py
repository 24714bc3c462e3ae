"""``ferry server --workers 2`` as real processes: a scratch PostgreSQL database, Mosquitto
with the example config, a simulated fleet, a webhook receiver.

Both workers serve; one of them holds the broker session and the background lease
(rollout engine, webhooks); each status report is ingested once; a ``kill -9`` of
that worker moves both leases to the other (uvicorn's supervisor starts a new
worker) and the next rollout completes; SIGTERM to the supervisor stops every
worker.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferry.cli.demo import FINAL_STATES, Operator
from ferry.server.webhooks.service import DELIVERY_HEADER, EVENT_TYPES
from tests.e2e._stack import Stack
from tests.server.conftest import pg_url  # noqa: F401  (scratch PostgreSQL database fixture)
from tests.support.mosquitto import require_mosquitto
from tests.support.workers import workers_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]

DEVICES = 12


class Receiver(ThreadingHTTPServer):
    """Counts webhook deliveries by their delivery id."""

    def __init__(self) -> None:
        self.deliveries: Counter[str] = Counter()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Hook)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Hook(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.deliveries[self.headers.get(DELIVERY_HEADER, "")] += 1
        self.send_response(204)
        self.end_headers()


@pytest.fixture
def stack(tmp_path: Path, pg_url: str) -> Iterator[Stack]:  # noqa: F811
    require_mosquitto()
    stack = Stack(tmp_path)
    stack.server.env.update(
        {
            "FERRY_WORKERS": "2",
            "FERRY_DATABASE_URL": pg_url,
            "FERRY_LEASE_POLL_S": "0.5",
            "FERRY_WEBHOOK_POLL_SECONDS": "0.2",
        }
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def embedded(tmp_path: Path, pg_url: str) -> Iterator[Stack]:  # noqa: F811
    """Two workers with the embedded Mosquitto, which the broker-session holder runs."""
    require_mosquitto()
    stack = Stack(tmp_path)
    stack.server.env.update(
        {
            "FERRY_WORKERS": "2",
            "FERRY_DATABASE_URL": pg_url,
            "FERRY_LEASE_POLL_S": "0.5",
            "FERRY_MQTT_EMBEDDED_BROKER": "mosquitto",
        }
    )
    for name in ("URL", "PASSWORD", "PASSWORD_FILE", "OPERATOR_PASSWORD_FILE", "PID_FILE"):
        stack.server.env.pop(f"FERRY_MQTT_{name}")
    stack.server.start()
    stack.op = Operator(stack.server.url, stack.server.admin_token)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def series(stack: Stack, name: str) -> dict[str, float]:
    """Every sample of one metric on ``/metrics``, keyed by its label text."""
    text = stack._metrics_text()
    found = re.findall(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, re.MULTILINE)
    return {labels: float(value) for labels, value in found}


def lease_holders(stack: Stack, lease: str) -> set[int]:
    pattern = re.compile(rf'lease="{re.escape(lease)}",pid="(\d+)"')
    return {
        int(m.group(1))
        for labels, value in series(stack, "ferry_lease_held").items()
        if value == 1 and (m := pattern.search(labels))
    }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def report_counts(stack: Stack) -> tuple[float, float, int]:
    """(reports accepted over either transport, MQTT messages ingested, reports stored)."""
    reports = series(stack, "ferry_status_reports_total")
    accepted = sum(v for labels, v in reports.items() if 'outcome="accepted"' in labels)
    mqtt = series(stack, "ferry_mqtt_status_messages_total")
    received = sum(v for k, v in mqtt.items() if re.search(r'"(accepted|duplicate)"', k))
    stored = sum(len(stack.history(d["id"])) for d in stack.devices())
    return accepted, received, stored


def run_rollout(stack: Stack, version: int) -> None:
    op = stack.op
    assert op is not None
    rollout = op.create_rollout(version, [50, 100], max_failure_pct=20, min_success_pct=90)
    status = op.wait_rollout(
        rollout["id"], lambda s: s["rollout"]["state"] in FINAL_STATES, timeout=180
    )
    assert status["rollout"]["state"] == "completed", status
    stack.wait(lambda: set(stack.installed().values()) == {version}, f"every device on {version}")


def test_two_workers_serve_lease_the_background_once_and_survive_a_kill_9(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    op = stack.op
    assert op is not None and stack.server.process is not None
    supervisor = stack.server.process.pid
    stack.wait(lambda: len(workers_of(supervisor)) == 2, "two worker processes")
    workers = workers_of(supervisor)

    # Both workers answer: requests spread over the shared socket until each served some.
    def both_served() -> bool:
        with httpx.Client(base_url=stack.server.url) as http:
            for _ in range(20):
                http.get("/healthz")
        served = series(stack, "ferry_worker_http_requests")
        return {f'pid="{p}"' for p in workers} <= {k for k, v in served.items() if v > 0}

    stack.wait(both_served, "requests answered by both workers")
    # /metrics, from whichever worker answers, sums every worker's counters.
    healthz = 'method="GET",route="/healthz",status="200"'
    before = series(stack, "ferry_http_requests_total")[healthz]
    with httpx.Client(base_url=stack.server.url) as http:
        for _ in range(50):
            http.get("/healthz")
    for _ in range(4):  # asked of both workers, in all likelihood: the same sum
        assert series(stack, "ferry_http_requests_total")[healthz] == before + 50
    # One worker holds the broker session and the background lease, the same one.
    stack.wait(lambda: len(lease_holders(stack, "background")) == 1, "a background holder")
    (holder,) = lease_holders(stack, "background")
    assert lease_holders(stack, "broker:ferry@server") == {holder}
    assert holder in workers

    hook = op._call(
        "POST",
        "/webhooks",
        json={"url": receiver.url, "events": sorted(EVENT_TYPES), "secret": "s" * 16},
    )
    first, second = op.publish_model(tmp_path / "bundles", [False, False], size=8192)
    stack.simulate(DEVICES, "w")
    stack.wait(lambda: op.fleet_status()["devices"] >= DEVICES, f"{DEVICES} devices")
    run_rollout(stack, first)

    # Each report is ingested once: over MQTT by the one subscriber (a second would
    # receive every report again), and counted accepted once whichever way it came.
    accepted, received, stored = report_counts(stack)
    assert accepted == stored > DEVICES
    assert 0 < received <= stored, (received, stored)

    # kill -9 of the worker holding the leases: the other takes them over, the
    # supervisor replaces the dead one, and the next rollout goes through.
    os.kill(holder, signal.SIGKILL)
    # The dead worker's gauges go as soon as it is gone, zombie or reaped: one holder.
    stack.wait(lambda: len(lease_holders(stack, "background") - {holder}) == 1, "the lease moving")
    (new_holder,) = lease_holders(stack, "background")
    # The dead worker's counts stay in the sum (counters never go back).
    assert series(stack, "ferry_http_requests_total")[healthz] >= before + 50
    assert new_holder != holder
    assert lease_holders(stack, "broker:ferry@server") == {new_holder}
    stack.wait(
        lambda: len(workers_of(supervisor)) == 2 and holder not in workers_of(supervisor),
        "a replacement worker",
    )
    run_rollout(stack, second)
    accepted, received, stored = report_counts(stack)
    assert accepted == stored
    # The killed worker may have taken reports it never acknowledged: the broker hands
    # them to the new session, and they count as duplicates, never as a second report.

    # Every webhook delivery arrived once, although two workers could deliver.
    listed = op._call("GET", f"/webhooks/{hook['id']}/deliveries")
    delivered = {str(d["id"]) for d in listed if d["status"] == "delivered"}
    stack.wait(lambda: set(receiver.deliveries) >= delivered, "the deliveries")
    assert len(delivered) >= 4  # two versions created, stage changes, rollout states
    assert set(receiver.deliveries.values()) == {1}, receiver.deliveries

    # SIGTERM to the supervisor stops every worker.
    live = workers_of(supervisor)
    process = stack.server.process
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0  # by itself: no SIGKILL needed
    stack.server.process = None
    assert not any(alive(pid) for pid in live)


def test_the_embedded_broker_moves_with_the_broker_session(embedded: Stack, tmp_path: Path) -> None:
    """The worker holding the session runs Mosquitto; devices enrolled through either
    worker can log in; after a kill -9 of that worker (its Mosquitto dies with it) the
    other starts Mosquitto again and devices converge over MQTT."""
    stack, op = embedded, embedded.op
    assert op is not None and stack.server.process is not None
    supervisor = stack.server.process.pid
    stack.wait(lambda: len(lease_holders(stack, "broker:ferry@server")) == 1, "a session holder")
    (holder,) = lease_holders(stack, "broker:ferry@server")
    first, second = op.publish_model(tmp_path / "bundles", [False, False], size=8192)
    stack.simulate(DEVICES, "e")
    stack.wait(lambda: op.fleet_status()["devices"] >= DEVICES, f"{DEVICES} devices")
    # Enrolments answered by the other worker reach the broker's password file too.
    passwd = stack.server.data_dir / "mqtt" / "passwd"
    stack.wait(
        lambda: (
            {d["id"] for d in stack.devices()}
            <= {line.split(":")[0] for line in passwd.read_text().splitlines()}
        ),
        "every device's broker login",
    )
    run_rollout(stack, first)
    accepted, received, stored = report_counts(stack)
    assert accepted == stored and 0 < received <= stored, (accepted, received, stored)

    os.kill(holder, signal.SIGKILL)
    stack.wait(
        lambda: lease_holders(stack, "broker:ferry@server") - {holder} != set(),
        "the broker session moving",
    )
    stack.wait(lambda: series(stack, "ferry_mqtt_connected").get("") == 1, "the subscription")
    before = received
    run_rollout(stack, second)
    accepted, received, stored = report_counts(stack)
    assert accepted == stored
    assert received > before  # devices reported over the restarted broker
    # The supervisor notices the death on its next 0.5 s poll, after pinging each live
    # worker (up to 5 s each when busy), so the replacement can trail the rollout.
    stack.wait(
        lambda: len(workers_of(supervisor)) == 2 and holder not in workers_of(supervisor),
        "a replacement worker",
    )
