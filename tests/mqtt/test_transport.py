"""The server's MQTT transport against a real Mosquitto on a free port."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Self

import pytest
from prometheus_client import CollectorRegistry

from ferry.protocol import topics
from ferry.protocol.canonical import canonical_json
from ferry.server.mqtt import (
    MqttLink,
    MqttMetrics,
    MqttNotifier,
    MqttService,
    MqttSettings,
    StatusSubscriber,
    status_subscription,
)
from tests.mqtt._clients import Directory, Peer, RecordingSink, status_report, wait_until
from tests.support.mosquitto import MosquittoBroker, mosquitto  # noqa: F401 (fixture)


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


class Server:
    """What one server replica runs: link + subscriber + notifier, with its own registry."""

    def __init__(
        self,
        url: str,
        sink: RecordingSink,
        *,
        client_id: str = "ferry-server-test",
        subscription: str = topics.ALL_DEVICE_STATUS,
    ) -> None:
        self.registry = CollectorRegistry()
        self.metrics = MqttMetrics(self.registry)
        self.subscriber = StatusSubscriber(sink, self.metrics, batch_size=50)
        self.link = MqttLink(
            url,
            client_id=client_id,
            subscription=subscription,
            on_message=lambda m: self.subscriber.handle(m.topic, m.payload, m.mid),
        )
        self.subscriber.ack = self.link.ack
        self.notifier = MqttNotifier(self.link, self.metrics)

    def __enter__(self) -> Self:
        self.subscriber.start()
        self.link.start()
        assert self.link.wait_connected(10)
        return self

    def __exit__(self, *_: object) -> None:
        self.link.stop()
        self.subscriber.stop()


@pytest.fixture
def peer(mosquitto: MosquittoBroker) -> Iterator[Peer]:  # noqa: F811
    client = Peer(mosquitto.url)
    assert client.connect()
    yield client
    client.close()


def test_announce_publishes_once_per_group_retained(
    mosquitto: MosquittoBroker,  # noqa: F811
    peer: Peer,
) -> None:
    peer.subscribe(f"{topics.PREFIX}/#")
    with Server(mosquitto.url, RecordingSink(set())) as server:
        server.notifier.announce(["all", "hw:x86_64", "all"], "rollout-7")
        assert peer.wait_for(topics.group_notice("hw:x86_64"))
        assert peer.wait_for(topics.group_notice("all"))
        assert _sample(server.registry, "ferry_mqtt_notices_published_total", kind="group") == 2
    assert len(peer.received()) == 2
    late = Peer(mosquitto.url)
    assert late.connect()
    late.subscribe(topics.group_notice("all"))
    assert late.wait_for(topics.group_notice("all"))
    notice = json.loads(late.received()[0])
    assert notice["_type"] == "notice" and notice["rollout_id"] == "rollout-7"
    assert late.messages[0][2] is True  # delivered as a retained message
    late.close()


def test_status_reports_are_validated_then_ingested_once(
    mosquitto: MosquittoBroker,  # noqa: F811
    peer: Peer,
) -> None:
    sink = RecordingSink({"dev-a"})
    with Server(mosquitto.url, sink) as server:
        good = status_report("dev-a")
        status_a = topics.device_status("dev-a")
        peer.publish(status_a, canonical_json(good.to_dict()))
        peer.publish(status_a, canonical_json(good.to_dict()))  # resend
        peer.publish(status_a, b"{not json")
        peer.publish(status_a, canonical_json({"_type": "keyring", "spec_version": 1}))
        peer.publish(status_a, canonical_json(status_report("dev-b").to_dict()))  # wrong topic
        peer.publish(
            topics.device_status("dev-c"), canonical_json(status_report("dev-c").to_dict())
        )  # unknown device
        last = status_report("dev-a")
        peer.publish(status_a, canonical_json(last.to_dict()))
        assert wait_until(lambda: last.report_id in sink.ids())
        registry = server.registry
        name = "ferry_mqtt_status_messages_total"
        assert wait_until(lambda: _sample(registry, name, outcome="unknown_device") == 1)
        assert sink.ids() == [good.report_id, last.report_id]
        assert _sample(registry, name, outcome="accepted") == 2
        assert _sample(registry, name, outcome="duplicate") == 1
        assert _sample(registry, name, outcome="malformed") == 2
        assert _sample(registry, name, outcome="topic_mismatch") == 1


def test_reports_sent_while_the_server_is_down_arrive_after_restart(
    mosquitto: MosquittoBroker,  # noqa: F811
    peer: Peer,
) -> None:
    sink = RecordingSink({"dev-a"})
    with Server(mosquitto.url, sink, client_id="ferry-server-r1"):
        pass  # the broker now holds a persistent session for this replica
    sent = [status_report("dev-a") for _ in range(5)]
    for report in sent:
        peer.publish(topics.device_status("dev-a"), canonical_json(report.to_dict()))
    assert sink.ids() == []
    with Server(mosquitto.url, sink, client_id="ferry-server-r1"):
        assert wait_until(lambda: len(sink.ids()) == 5)
    assert sink.ids() == [r.report_id for r in sent]


def test_failed_ingest_is_retried_and_nothing_is_lost(
    mosquitto: MosquittoBroker,  # noqa: F811
    peer: Peer,
) -> None:
    sink = RecordingSink({"dev-a"}, fail_next=2)
    with Server(mosquitto.url, sink) as server:
        report = status_report("dev-a")
        peer.publish(topics.device_status("dev-a"), canonical_json(report.to_dict()))
        assert wait_until(lambda: sink.ids() == [report.report_id])
        name = "ferry_mqtt_status_messages_total"
        assert _sample(server.registry, name, outcome="ingest_error") == 2


def test_replicas_split_status_traffic_with_a_shared_subscription(
    mosquitto: MosquittoBroker,  # noqa: F811
    peer: Peer,
) -> None:
    subscription = status_subscription(MqttSettings(url=mosquitto.url, shared_group="ferry"))
    assert subscription == "$share/ferry/ferry/v1/devices/+/status"
    sinks = [RecordingSink({"dev-a"}), RecordingSink({"dev-a"})]
    with (
        Server(mosquitto.url, sinks[0], client_id="replica-1", subscription=subscription),
        Server(mosquitto.url, sinks[1], client_id="replica-2", subscription=subscription),
    ):
        sent = [status_report("dev-a") for _ in range(40)]
        for report in sent:
            peer.publish(topics.device_status("dev-a"), canonical_json(report.to_dict()))
        assert wait_until(lambda: len(sinks[0].ids()) + len(sinks[1].ids()) >= 40)
    assert sorted(sinks[0].ids() + sinks[1].ids()) == sorted(r.report_id for r in sent)
    assert sinks[0].ids() and sinks[1].ids()


def test_a_stolen_session_is_visible_in_logs_and_metrics(
    mosquitto: MosquittoBroker,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a broker that does not bind ids to logins, a thief takes the server's session."""
    metrics = MqttMetrics(CollectorRegistry())
    service = MqttService(
        MqttSettings(url=mosquitto.url),
        directory=Directory({}),
        sink=RecordingSink(set()),
        metrics=metrics,
    )
    asyncio.run(service.start())
    try:
        assert service.wait_connected(10)
        thief = Peer(mosquitto.url, client_id=service.link.client_id)
        assert thief.connect()
        assert wait_until(lambda: metrics.subscription_lost._value.get() >= 1)
        # The link's thread logs just after counting: wait for the line, do not race it.
        assert wait_until(lambda: "status subscription lost" in caplog.text)
        thief.close()
        assert wait_until(lambda: service.live)  # the server takes its session back
        assert metrics.connected._value.get() == 1
    finally:
        asyncio.run(service.stop())
