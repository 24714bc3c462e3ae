"""Prometheus counters of the MQTT transport, on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class MqttMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.notices = Counter("ferry_mqtt_notices_published",
                               "Retained notices published (one per group per announcement)",
                               ["kind"], registry=registry)
        self.status_messages = Counter(
            "ferry_mqtt_status_messages",
            "Status messages received over MQTT, by outcome: accepted, duplicate, malformed, "
            "topic_mismatch, unknown_device, revoked_device, ingest_error",
            ["outcome"], registry=registry)
