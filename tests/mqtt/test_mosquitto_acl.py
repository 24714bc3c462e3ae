"""firmware_examples/mosquitto: per-device logins and topic ACLs, on a real Mosquitto.

Mosquitto drops an unauthorised publish silently and never delivers a message a
client may not read, so each "nothing arrived" is proved with a barrier: an
authorised message sent afterwards on the same path does arrive.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.protocol import topics
from ferry.protocol.canonical import canonical_json
from ferry.server.core.settings import SettingsError
from ferry.server.fleet.selectors import DEVICE_ID
from ferry.server.mqtt import (
    MqttMetrics,
    MqttService,
    MqttSettings,
    mosquitto_hash,
    render_acl,
    verify_mosquitto_hash,
)
from ferry.server.mqtt._settings import SERVER_USERNAME
from tests.mqtt._clients import Directory, Peer, RecordingSink, status_report, wait_until
from tests.support.mosquitto import MosquittoBroker, mosquitto_passwd_binary

EXAMPLE = Path(__file__).resolve().parents[2] / "firmware_examples" / "mosquitto"
SERVER_PASSWORD = "server-secret"
# Lines the test replaces: ports, paths and persistence belong to the test's tmp dir.
# Persistence and autosave are kept: the kill -9 test relies on the shipped settings.
_LOCAL_KEYS = {
    "listener",
    "per_listener_settings",
    "persistence_location",
    "log_dest",
    "log_type",
    "password_file",
    "acl_file",
    "pid_file",
}
OPERATOR = ("ops-bridge", "bridge-password")


def _example_conf(workdir: Path) -> str:
    kept = [
        line
        for line in (EXAMPLE / "mosquitto.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#") and line.split()[0] not in _LOCAL_KEYS
    ]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "acl").write_text(
        (EXAMPLE / "acl").read_text() + f"\nuser {OPERATOR[0]}\ntopic read ferry/v1/#\n"
    )
    return "\n".join(
        [
            *kept,
            f"password_file {workdir / 'passwd'}",
            f"acl_file {workdir / 'acl'}",
            f"persistence_location {workdir}/",
            "",
        ]
    )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, MqttService, Directory]]:
    directory = Directory({"dev-a": "password-of-a", "dev-b": "password-of-b"})
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.extra_conf = _example_conf(broker.workdir)
    pid_file = tmp_path / "mosquitto.pid"
    operator_file = tmp_path / "operator.passwd"
    operator_file.write_text(
        f"# kept by the operator\n{OPERATOR[0]}:{mosquitto_hash(OPERATOR[1], os.urandom(12))}\n"
    )
    settings = MqttSettings(
        url=broker.url,
        password=SERVER_PASSWORD,
        password_file=str(broker.workdir / "passwd"),
        pid_file=str(pid_file),
        operator_password_file=str(operator_file),
    )
    service = MqttService(
        settings, directory=directory, sink=RecordingSink({"dev-a", "dev-b"}), metrics=MqttMetrics()
    )
    service.credentials_changed()
    broker.start()
    assert broker.process is not None
    pid_file.write_text(f"{broker.process.pid}\n")
    yield broker, service, directory
    broker.stop()


@pytest.fixture
def running(
    fleet: tuple[MosquittoBroker, MqttService, Directory],
) -> Iterator[tuple[MosquittoBroker, MqttService, Directory]]:
    """The fleet with the server's link connected and subscribed."""
    service = fleet[1]
    asyncio.run(service.start())
    assert service.wait_connected(10)
    yield fleet
    asyncio.run(service.stop())


def _device(broker: MosquittoBroker, service: MqttService, device_id: str) -> Peer:
    assert service.device_url == broker.url
    password = service.directory.passwords[device_id]  # type: ignore[attr-defined]
    return Peer(broker.url, device_id, password, client_id=device_id)


def _server(broker: MosquittoBroker) -> Peer:
    peer = Peer(broker.url, SERVER_USERNAME, SERVER_PASSWORD, client_id=SERVER_USERNAME)
    assert peer.connect()
    return peer


def test_devices_log_in_with_their_derived_password_only(fleet) -> None:  # type: ignore[no-untyped-def]
    broker, service, _ = fleet
    device = _device(broker, service, "dev-a")
    assert device.connect()
    device.close()
    assert not Peer(broker.url, "dev-a", "password-of-b").connect()
    assert not Peer(broker.url).connect()  # anonymous
    assert not Peer(broker.url, "dev-x", "frm_guess").connect()  # unknown device


def test_a_device_cannot_publish_another_devices_status(fleet) -> None:  # type: ignore[no-untyped-def]
    broker, service, _ = fleet
    server = _server(broker)
    server.subscribe(topics.ALL_DEVICE_STATUS)
    a, b = _device(broker, service, "dev-a"), _device(broker, service, "dev-b")
    assert a.connect() and b.connect()
    forged = status_report("dev-b")
    a.publish(topics.device_status("dev-b"), canonical_json(forged.to_dict()))
    genuine = status_report("dev-b")
    b.publish(topics.device_status("dev-b"), canonical_json(genuine.to_dict()))
    assert server.wait_for(topics.device_status("dev-b"))
    assert server.received() == [canonical_json(genuine.to_dict())]
    for peer in (a, b, server):
        peer.close()


def test_a_device_cannot_read_another_devices_notices(fleet) -> None:  # type: ignore[no-untyped-def]
    broker, service, _ = fleet
    server = _server(broker)
    a = _device(broker, service, "dev-a")
    assert a.connect()
    a.subscribe(topics.device_notice("dev-b"))
    a.subscribe(topics.device_notice("dev-a"))
    a.subscribe(topics.group_notice("all"))
    server.publish(topics.device_notice("dev-b"), b'{"for":"b"}', retain=True)
    server.publish(topics.device_notice("dev-a"), b'{"for":"a"}', retain=True)
    server.publish(topics.group_notice("all"), b'{"for":"all"}', retain=True)
    assert a.wait_for(topics.group_notice("all"))
    assert a.wait_for(topics.device_notice("dev-a"))
    assert a.received(topics.device_notice("dev-b")) == []
    late = _device(broker, service, "dev-a")  # retained copies are filtered the same way
    assert late.connect()
    late.subscribe(f"{topics.PREFIX}/devices/+/notice")
    late.subscribe(topics.device_notice("dev-a"))
    assert late.wait_for(topics.device_notice("dev-a"))
    assert late.received(topics.device_notice("dev-b")) == []
    for peer in (a, late, server):
        peer.close()


def test_revoked_device_is_refused_after_the_server_rewrites_passwords(fleet) -> None:  # type: ignore[no-untyped-def]
    broker, service, directory = fleet
    assert _device(broker, service, "dev-a").connect()
    old_password = directory.passwords.pop("dev-a")
    service.credentials_changed()  # file rewritten and SIGHUP sent
    # The reload is asynchronous: wait until it has taken effect, then check both ways.
    assert wait_until(lambda: not _can_log_in(broker.url, "dev-a", old_password))
    assert _can_log_in(broker.url, "dev-b", directory.passwords["dev-b"])


def _can_log_in(url: str, username: str, password: str) -> bool:
    peer = Peer(url, username, password)
    accepted = peer.connect()
    peer.close()
    return accepted


def test_password_hashes_are_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    """The embedded broker checks logins with the same hash Mosquitto reads."""
    tool = mosquitto_passwd_binary()
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    path = tmp_path / "passwd"
    assert os.system(f"{tool} -c -b {path} alice s3cret >/dev/null") == 0
    line = path.read_text().strip()
    _, _, iterations, salt, _ = line.split(":", 1)[1].split("$")
    assert line == "alice:" + mosquitto_hash("s3cret", base64.b64decode(salt))
    assert iterations == "101"
    assert verify_mosquitto_hash("s3cret", line.split(":", 1)[1])
    assert not verify_mosquitto_hash("S3cret", line.split(":", 1)[1])
    assert not verify_mosquitto_hash("s3cret", "garbage")


def test_the_example_acl_is_the_one_the_embedded_broker_writes() -> None:
    """One set of rules: firmware_examples/mosquitto/acl is `render_acl` for the default login."""
    assert (EXAMPLE / "acl").read_text() == render_acl([SERVER_USERNAME])


@pytest.mark.parametrize("stolen_id", ["dev-b", "ferry-agent-dev-b", SERVER_USERNAME])
def test_a_device_logging_in_with_another_client_id_kicks_nobody(
    running,  # type: ignore[no-untyped-def]
    stolen_id: str,
) -> None:
    """Issue 13: with the shipped config an id is the login (use_username_as_clientid)."""
    broker, service, _ = running
    b = _device(broker, service, "dev-b")
    assert b.connect()
    for _ in range(3):
        intruder = Peer(broker.url, "dev-a", "password-of-a", client_id=stolen_id)
        assert intruder.connect()
        intruder.close()
    report = status_report("dev-b")
    b.publish(topics.device_status("dev-b"), canonical_json(report.to_dict()))
    assert wait_until(lambda: report.report_id in service.subscriber.sink.ids())  # type: ignore[attr-defined]
    assert b.disconnects == 0
    assert service.live and service.metrics.subscription_lost._value.get() == 0
    b.close()


def test_an_operator_login_survives_the_servers_rewrite(fleet) -> None:  # type: ignore[no-untyped-def]
    """Issue 13: logins in the operator's file are merged into every rewrite, never dropped."""
    broker, service, directory = fleet
    assert _can_log_in(broker.url, *OPERATOR)
    directory.passwords["dev-c"] = "password-of-c"  # an enrolment
    service.credentials_changed()
    assert wait_until(lambda: _can_log_in(broker.url, "dev-c", "password-of-c"))
    assert _can_log_in(broker.url, *OPERATOR)
    assert f"{OPERATOR[0]}:" in (broker.workdir / "passwd").read_text()


def test_kill_9_of_the_broker_with_reports_in_flight_loses_none(running) -> None:  # type: ignore[no-untyped-def]
    """Issue 14: the shipped config and the server's defaults restore its subscription.

    Every acknowledged report is stored but, at most, the one each device had in flight
    at the instant of the kill (Mosquitto acknowledges before its next save; see
    tests/mqtt/test_server_embedded.py and docs/mqtt.md)."""
    broker, service, _ = running
    sink: RecordingSink = service.subscriber.sink  # type: ignore[assignment]
    devices = {d: _device(broker, service, d) for d in ("dev-a", "dev-b")}
    for peer in devices.values():
        assert peer.connect()
    acked: list[str] = []
    # A device may send one more report between the kill and the flag (never
    # acknowledged): the one in flight at the kill is the last or the one before it.
    sent_before_kill: dict[str, deque[str]] = {d: deque(maxlen=2) for d in devices}
    killed = threading.Event()
    stop = threading.Event()

    def publish(device_id: str, peer: Peer) -> None:
        while not stop.is_set():
            report = status_report(device_id)
            before_kill = not killed.is_set()
            info = peer.client.publish(
                topics.device_status(device_id), canonical_json(report.to_dict()), qos=1
            )
            if before_kill:
                sent_before_kill[device_id].append(report.report_id)
            try:
                info.wait_for_publish(2)
                if info.is_published():
                    acked.append(report.report_id)
            except RuntimeError:  # disconnected: an agent keeps it queued and retries
                time.sleep(0.1)
            time.sleep(0.005)

    threads = [threading.Thread(target=publish, args=item) for item in devices.items()]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: len(acked) >= 50)
    service.link.client.loop_stop()  # the server is slow: what the broker sends it waits
    broker.kill()
    killed.set()
    broker.start()
    restarted = len(acked)
    # The devices are back first and publish before the server has reconnected.
    assert wait_until(lambda: len(acked) >= restarted + 100, 30)
    service.link.client.loop_start()
    stop.set()
    for thread in threads:
        thread.join()
    allowed = set().union(*sent_before_kill.values())
    assert wait_until(lambda: set(acked) - set(sink.ids()) <= allowed, 20), (
        f"{len(set(acked) - set(sink.ids()) - allowed)} acknowledged reports were lost"
    )
    assert len(set(acked) - set(sink.ids())) <= len(devices)  # at most one per device
    for peer in devices.values():
        peer.close()


def test_no_device_can_be_enrolled_under_the_servers_login() -> None:
    """Issue 13: the server's login (and so its client id) is outside the device-id alphabet."""
    assert not DEVICE_ID.match(SERVER_USERNAME)
    with pytest.raises(ValueError):
        topics.device_status(SERVER_USERNAME)
    with pytest.raises(SettingsError, match="could be a device's id"):
        MqttSettings.from_env({"FERRY_MQTT_USERNAME": "ferry-server"})
    assert MqttSettings.from_env({"FERRY_MQTT_USERNAME": "ferry@server-2"}).username
