"""Both embedded brokers (Mosquitto child, amqtt fallback) enforce the same rules as the ACL.

One parametrised suite: the server's `MqttService` in embedded mode, once with
``embedded_broker="mosquitto"`` and once with ``"amqtt"``, devices as paho peers.
A broker drops an unauthorised publish silently and never delivers what a client
may not read, so each "nothing arrived" is proved with a barrier: an authorised
message sent afterwards on the same path does arrive.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ferry.agent.mqtt import MqttLink as AgentLink
from ferry.protocol import topics
from ferry.protocol.canonical import canonical_json
from ferry.server.mqtt import BrokerStartError, MqttMetrics, MqttService, MqttSettings
from tests.mqtt._clients import Directory, Peer, RecordingSink, status_report, wait_until
from tests.support.mosquitto import free_port, require_mosquitto

PASSWORDS = {"dev-a": "password-of-a", "dev-b": "password-of-b"}


@dataclass
class Embedded:
    service: MqttService
    sink: RecordingSink
    metrics: MqttMetrics

    @property
    def url(self) -> str:
        return self.service.device_url

    def peer(self, user: str, client_id: str | None = None, *, connect: bool = True) -> Peer:
        password = (
            self.service.settings.password
            if user == self.service.settings.username
            else PASSWORDS[user]
        )
        peer = Peer(self.url, user, password, client_id=client_id or user)
        if connect:
            assert peer.connect(), f"{user} could not log in"
        return peer

    def lost(self) -> float:
        return self.metrics.subscription_lost._value.get()


@pytest.fixture(params=["mosquitto", "amqtt"])
def embedded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Embedded]:
    """The server's MQTT service with its embedded broker, on an event loop in a thread."""
    if request.param == "mosquitto":
        require_mosquitto()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    embedded = _embedded(request.param, tmp_path / "mqtt")
    asyncio.run_coroutine_threadsafe(embedded.service.start(), loop).result(20)
    assert embedded.service.wait_connected(10)
    yield embedded
    asyncio.run_coroutine_threadsafe(embedded.service.stop(), loop).result(20)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _embedded(kind: str, state_dir: Path) -> Embedded:
    settings = MqttSettings(
        enabled=True, port=free_port(), embedded_broker=kind, state_dir=str(state_dir)
    )
    sink, metrics = RecordingSink(set(PASSWORDS)), MqttMetrics()
    service = MqttService(
        settings, directory=Directory(dict(PASSWORDS)), sink=sink, metrics=metrics
    )
    return Embedded(service, sink, metrics)


def test_logins_are_checked(embedded: Embedded) -> None:
    assert not Peer(embedded.url).connect()  # anonymous
    assert not Peer(embedded.url, "dev-a", "password-of-b", "dev-a").connect()
    assert not Peer(embedded.url, "dev-x", "anything", "dev-x").connect()  # unknown
    assert not Peer(embedded.url, embedded.service.settings.username, "guess").connect()
    embedded.peer("dev-a").close()


def test_a_device_reaches_only_its_own_topics(embedded: Embedded) -> None:
    a, b = embedded.peer("dev-a"), embedded.peer("dev-b")
    forged, genuine = status_report("dev-b"), status_report("dev-b")
    a.publish(topics.device_status("dev-b"), canonical_json(forged.to_dict()))
    b.publish(topics.device_status("dev-b"), canonical_json(genuine.to_dict()), retain=True)
    assert wait_until(lambda: genuine.report_id in embedded.sink.ids())
    assert embedded.sink.ids() == [genuine.report_id]

    # Another device's notice and status, live or retained, through any filter: nothing.
    for topic in (
        topics.device_notice("dev-b"),
        topics.device_status("dev-b"),
        f"{topics.PREFIX}/devices/+/status",
        f"{topics.PREFIX}/#",
        "#",
        topics.device_notice("dev-a"),
        topics.group_notice("all"),
    ):
        a.subscribe(topic)
    b.publish(topics.device_status("dev-b"), canonical_json(status_report("dev-b").to_dict()))
    notifier = embedded.service.notifier
    notifier.notify_devices(["dev-b", "dev-a"])
    notifier.announce(["all"], None)
    assert a.wait_for(topics.device_notice("dev-a")) and a.wait_for(topics.group_notice("all"))
    assert wait_until(lambda: len(embedded.sink.ids()) == 2)
    assert {t for t, _, _ in a.messages} == {
        topics.device_notice("dev-a"),
        topics.group_notice("all"),
    }
    for peer in (a, b):
        peer.close()


@pytest.mark.parametrize("stolen_id", ["dev-b", "ferry-agent-dev-b", "ferry@server"])
def test_a_hostile_device_cannot_kick_another_device_or_the_server(
    embedded: Embedded, stolen_id: str
) -> None:
    """dev-a logs in with its own password but another client id, again and again."""
    b = embedded.peer("dev-b")
    b.subscribe(topics.device_notice("dev-b"))
    for _ in range(3):
        intruder = embedded.peer("dev-a", client_id=stolen_id, connect=False)
        intruder.connect()  # refused (amqtt) or given its own id (Mosquitto): both are fine
        intruder.close()
    report = status_report("dev-b")
    b.publish(topics.device_status("dev-b"), canonical_json(report.to_dict()))
    assert wait_until(lambda: report.report_id in embedded.sink.ids())  # still ingesting
    embedded.service.notifier.notify_devices(["dev-b"])
    assert b.wait_for(topics.device_notice("dev-b"))  # b kept its subscription
    assert b.disconnects == 0
    assert embedded.lost() == 0 and embedded.service.live
    b.close()


def test_the_agent_logs_in_with_the_client_id_the_broker_binds(embedded: Embedded) -> None:
    """The agent's client id is its login, so even amqtt (which refuses others) accepts it."""
    noticed = threading.Event()
    agent = AgentLink(
        embedded.url,
        device_id="dev-a",
        groups=("all",),
        username="dev-a",
        password=PASSWORDS["dev-a"],
        keepalive_s=30,
        publish_timeout_s=5,
        reconnect_max_s=2,
        on_notice=noticed.set,
    )
    agent.start()
    try:
        assert wait_until(lambda: agent.connected)
        report = status_report("dev-a")
        assert agent.publish(report.to_dict())
        assert wait_until(lambda: report.report_id in embedded.sink.ids())
    finally:
        agent.stop()


def test_a_second_server_on_the_same_data_dir_leaves_the_first_broker_alone(tmp_path: Path) -> None:
    """Two Mosquittos on one persistence file would corrupt it; the second one does not start."""
    require_mosquitto()
    first, second = (_embedded("mosquitto", tmp_path / "mqtt") for _ in range(2))
    asyncio.run(first.service.start())
    try:
        assert first.service.wait_connected(10)
        passwords = (tmp_path / "mqtt" / "passwd").read_text()
        with pytest.raises(BrokerStartError, match="another server's embedded broker"):
            asyncio.run(second.service.start())
        assert (tmp_path / "mqtt" / "passwd").read_text() == passwords
        first.peer("dev-a").close()
        assert first.service.live
    finally:
        asyncio.run(first.service.stop())
