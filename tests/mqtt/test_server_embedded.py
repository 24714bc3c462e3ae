"""`ferry server` with its default embedded broker: enrolment, device logins, status over MQTT."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferry.cli.demo import Operator, ServerProcess, wait_until
from ferry.protocol import endpoints, topics
from ferry.protocol.canonical import canonical_json
from tests.mqtt._clients import Peer, status_report

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Operator]]:
    process = ServerProcess(tmp_path / "server").start()
    op = Operator(process.url, process.admin_token)
    op.sdk.create_namespace("demo")
    yield process, op
    op.close()
    process.stop()


def _enroll(server: ServerProcess, op: Operator, device_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.post(f"{server.url}{endpoints.ENROLL}", timeout=30, json={
        "enrollment_token": op.enrollment_token(1), "device_id": device_id,
        "hardware": "x86_64", "agent_version": "test", "tags": {}}).json()
    return answer


def _can_log_in(login: dict[str, str]) -> bool:
    peer = Peer(login["url"], login["username"], login["password"])
    accepted = peer.connect()
    peer.close()
    return accepted


def test_enrolled_device_reports_over_the_embedded_broker(
        server: tuple[ServerProcess, Operator]) -> None:
    process, op = server
    login = _enroll(process, op, "dev-1")["mqtt"]
    assert login["url"] == f"mqtt://127.0.0.1:{process.mqtt_port}"
    assert not _can_log_in({**login, "password": "wrong"})
    device = Peer(login["url"], login["username"], login["password"])
    assert device.connect()
    report = status_report("dev-1")
    device.publish(topics.device_status("dev-1"), canonical_json(report.to_dict()))
    device.publish(topics.device_status("dev-1"), canonical_json(report.to_dict()))  # resend

    def stored() -> list[str]:
        history = op._call("GET", "/devices/dev-1")["history"]
        return [entry["report_id"] for entry in history]

    wait_until(lambda: report.report_id in stored(), 20, "the report to be ingested")
    assert stored() == [report.report_id]
    device.close()
    op._call("POST", "/devices/dev-1/revoke")
    assert not _can_log_in(login)


def test_a_taken_broker_port_leaves_the_server_up_without_mqtt(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = ServerProcess(tmp_path / "server", mqtt_port=port).start()
        op = Operator(process.url, process.admin_token)
        try:
            op.sdk.create_namespace("demo")
            assert _enroll(process, op, "dev-1")["mqtt"] is None
            log = process.log_path.read_text()
            assert (f"MQTT: off, devices poll over HTTP (port {port} on 127.0.0.1 is already in "
                    "use") in log, "the start banner says MQTT is off and why"
        finally:
            op.close()
            process.stop()
