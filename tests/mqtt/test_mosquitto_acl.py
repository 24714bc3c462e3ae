"""firmware_examples/mosquitto: per-device logins and topic ACLs, on a real Mosquitto.

Mosquitto drops an unauthorised publish silently and never delivers a message a
client may not read, so each "nothing arrived" is proved with a barrier: an
authorised message sent afterwards on the same path does arrive.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.protocol import topics
from ferry.protocol.canonical import canonical_json
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
_LOCAL_KEYS = {"listener", "per_listener_settings", "persistence", "persistence_location",
               "autosave_interval", "log_dest", "log_type", "password_file", "acl_file",
               "pid_file"}


def _example_conf(workdir: Path) -> str:
    kept = [line for line in (EXAMPLE / "mosquitto.conf").read_text().splitlines()
            if line.strip() and not line.startswith("#")
            and line.split()[0] not in _LOCAL_KEYS]
    return "\n".join([*kept, f"password_file {workdir / 'passwd'}",
                      f"acl_file {EXAMPLE / 'acl'}", ""])


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, MqttService, Directory]]:
    directory = Directory({"dev-a": "password-of-a", "dev-b": "password-of-b"})
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.extra_conf = _example_conf(broker.workdir)
    pid_file = tmp_path / "mosquitto.pid"
    settings = MqttSettings(url=broker.url, password=SERVER_PASSWORD,
                            password_file=str(broker.workdir / "passwd"), pid_file=str(pid_file))
    service = MqttService(settings, directory=directory, sink=RecordingSink(set()),
                          metrics=MqttMetrics())
    service.credentials_changed()
    broker.start()
    assert broker.process is not None
    pid_file.write_text(f"{broker.process.pid}\n")
    yield broker, service, directory
    broker.stop()


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
    assert not Peer(broker.url).connect()                        # anonymous
    assert not Peer(broker.url, "dev-x", "frm_guess").connect()   # unknown device


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
    late = _device(broker, service, "dev-a")   # retained copies are filtered the same way
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
    service.credentials_changed()           # file rewritten and SIGHUP sent
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
