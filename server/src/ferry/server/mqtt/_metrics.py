"""Prometheus counters of the MQTT transport, on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class MqttMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.notices = Counter(
            "ferry_mqtt_notices_published",
            "Retained notices published (one per group per announcement)",
            ["kind"],
            registry=registry,
        )
        self.status_messages = Counter(
            "ferry_mqtt_status_messages",
            "Status messages received over MQTT, by outcome: accepted, duplicate, malformed, "
            "topic_mismatch, unknown_device, revoked_device, ingest_error",
            ["outcome"],
            registry=registry,
        )
        self.connected = Gauge(
            "ferry_mqtt_connected",
            "1 while the server's status subscription is live, else 0",
            registry=registry,
            multiprocess_mode="livemax",  # several workers: 1 when the one holding it is live
        )
        self.subscription_lost = Counter(
            "ferry_mqtt_subscription_lost",
            "Times the live status subscription was lost (disconnect, session taken over)",
            registry=registry,
        )
