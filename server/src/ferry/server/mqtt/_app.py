"""Wiring into the FastAPI app: one call in the lifespan starts MQTT and plugs it into the fleet."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from ferry.server.core.context import AppContext
from ferry.server.fleet.runtime import runtime_of
from ferry.server.mqtt._errors import BrokerStartError
from ferry.server.mqtt._fleet import FleetDirectory, FleetStatusSink
from ferry.server.mqtt._metrics import MqttMetrics
from ferry.server.mqtt._service import MqttService
from ferry.server.mqtt._settings import MqttSettings

log = logging.getLogger("ferry.server.mqtt")


async def start_mqtt(
    app: FastAPI,
    ctx: AppContext,
    settings: MqttSettings | None = None,
    metrics: MqttMetrics | None = None,
) -> MqttService | None:
    """Start the transport and make it the fleet's notifier and broker sync.

    Returns None when MQTT is off (``FERRY_MQTT_ENABLED=false``, or the embedded
    broker's port is taken): devices then converge by HTTP polling. Pass ``metrics``
    when starting more than once in one app (a worker that takes the broker session over).
    """
    settings = settings or ctx.settings.mqtt
    if not settings.enabled:
        log.info("mqtt disabled; devices converge by HTTP polling")
        return None
    runtime = runtime_of(app)
    if not settings.state_dir:
        settings = settings.with_overrides(state_dir=str(ctx.settings.data_dir / "mqtt"))
    service = MqttService(
        settings,
        directory=FleetDirectory(ctx.read_engine),
        sink=FleetStatusSink(ctx.engine, runtime.now, ctx.metrics, runtime.last_seen.touch),
        metrics=metrics or MqttMetrics(ctx.metrics.registry),
    )
    try:
        await service.start()
    except BrokerStartError as exc:
        # A second server on one machine (or a test) must not die for want of port 1885.
        log.error(
            "continuing without MQTT: devices converge by HTTP polling; set "
            "FERRY_MQTT_PORT to a free port or FERRY_MQTT_ENABLED=false",
            extra={"fields": {"error": str(exc), "code": exc.code}},
        )
        return None
    service.link.on_publish_error = ctx.metrics.mqtt_publish_errors.inc
    runtime.notifier = service.notifier
    runtime.broker_sync = service
    # Enrolment tells devices this URL (FERRY_MQTT_PUBLIC_URL, else the broker's).
    runtime.broker_url = service.device_url
    return service


async def stop_mqtt(service: MqttService | None) -> None:
    if service is not None:
        await service.stop()
