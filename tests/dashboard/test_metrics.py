"""`/metrics` carries the fleet, rollout, check-in, transfer, ingest, MQTT and webhook figures
with bounded labels; `/readyz` names what is not ready."""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
from datetime import timedelta

import paho.mqtt.client as mqtt

from ferry.protocol.documents import StatusReport
from ferry.protocol.timefmt import format_time
from ferry.server.api.system import readiness
from ferry.server.mqtt._fleet import FleetStatusSink
from ferry.server.mqtt._link import MqttLink
from ferry.server.rollouts.engine import tick
from tests.dashboard.helpers import first_agent, live_rollout
from tests.fleet.harness import Fleet, report_doc
from tests.rollouts.helpers import by_wave, commit, fail
from tests.support.metrics import parse, value


def scrape(fleet: Fleet) -> dict:
    r = fleet.client.get("/metrics")
    assert r.status_code == 200
    return parse(r.text)


def test_devices_by_status_state_and_installed_version(fleet: Fleet) -> None:
    rollout, agents = live_rollout(fleet, devices=5, waves=[100])
    fleet.clock.advance(600)
    commit(fleet, agents[:3], 1, rollout["id"])
    fleet.flush_last_seen()  # reports note sightings; the server writes them every 2 s
    m = scrape(fleet)
    assert value(m, "ferry_devices", status="online") == 3
    assert value(m, "ferry_devices", status="offline") == 2
    assert value(m, "ferry_devices", status="revoked") == 0
    assert value(m, "ferry_device_slots", state="committed") == 3
    assert value(m, "ferry_devices_installed", model="vision/det", slot="main", version="1") == 3
    assert value(m, "ferry_rollouts", state="running") == 1
    assert value(m, "ferry_rollouts", state="halted") == 0
    assert value(m, "ferry_rollout_waves", state="open") == 1
    assert value(m, "ferry_rollout_devices", state="committed") == 3
    assert value(m, "ferry_rollout_devices", state="pending") == 2
    assert value(m, "ferry_rollout_device_state_oldest_seconds", state="pending") == 600


def test_no_label_carries_a_device_id(fleet: Fleet) -> None:
    rollout, agents = live_rollout(fleet, devices=3)
    commit(fleet, agents, 1, rollout["id"])
    fleet.desired(agents[0])
    text = fleet.client.get("/metrics").text
    for agent in agents:
        assert agent.device_id not in text
    labels = {k for (_, pairs) in parse(text) for k, _ in pairs}
    assert not labels & {"device", "device_id", "id"}


def test_gate_decisions_are_counted(fleet: Fleet) -> None:
    ctx = fleet.app.state.ctx
    record = lambda d: ctx.metrics.gate_decisions.labels(d).inc()
    rollout, agents = live_rollout(fleet, devices=6, waves=[50, 100], max_failures=0, max_retries=0)
    waves = by_wave(rollout, agents)
    tick(ctx.engine, fleet.runtime, record)  # nothing reported yet
    commit(fleet, waves[0], 1, rollout["id"])
    tick(ctx.engine, fleet.runtime, record)  # the gate passes: wave 2 opens
    fail(fleet, waves[1][:1], 1, rollout["id"])
    tick(ctx.engine, fleet.runtime, record)  # the failure limit halts it
    m = scrape(fleet)
    assert value(m, "ferry_rollout_gate_decisions_total", decision="wait") == 1
    assert value(m, "ferry_rollout_gate_decisions_total", decision="advance") == 1
    assert value(m, "ferry_rollout_gate_decisions_total", decision="halt") == 1
    assert value(m, "ferry_rollouts", state="halted") == 1


def test_checkin_latency_is_measured_on_both_the_computed_and_the_cached_path(fleet: Fleet) -> None:
    agent = fleet.devices(1)[0]
    for _ in range(5):  # the first is computed and signed, later ones come from the cache
        fleet.desired(agent)  # (unless the epoch poller emptied it meanwhile: then computed)
    m = scrape(fleet)
    computed = value(m, "ferry_checkin_duration_seconds_count", path="computed")
    cached = value(m, "ferry_checkin_duration_seconds_count", path="cached")
    assert computed >= 1 and cached >= 1 and computed + cached == 5


def test_bytes_served_count_full_blobs_and_ranges(fleet: Fleet) -> None:
    data = secrets.token_bytes(5000)
    sha = hashlib.sha256(data).hexdigest()
    fleet.client.put(f"/api/v1/blobs/{sha}", content=data, headers=fleet.admin)
    assert len(fleet.client.get(f"/api/v1/blobs/{sha}", headers=fleet.admin).content) == 5000
    r = fleet.client.get(f"/api/v1/blobs/{sha}", headers={**fleet.admin, "Range": "bytes=0-99"})
    assert r.status_code == 206
    m = scrape(fleet)
    assert value(m, "ferry_served_bytes_total", kind="full") == 5100
    assert value(m, "ferry_served_bytes_total", kind="delta") == 0


def test_reports_are_counted_per_transport_with_their_lag(fleet: Fleet) -> None:
    rollout, agents = live_rollout(fleet, devices=2)
    agent = first_agent(rollout, agents)
    doc = report_doc(
        agent.device_id,
        "downloading",
        to_version=1,
        rollout_id=rollout["id"],
        at=format_time(fleet.clock.now - timedelta(seconds=120)),
    )
    for _ in range(2):  # the resend is a duplicate
        assert (
            fleet.client.post(
                "/api/v1/device/status", json={"reports": [doc]}, headers=agent.headers
            ).status_code
            == 200
        )
    ctx = fleet.app.state.ctx
    sink = FleetStatusSink(ctx.engine, fleet.clock, ctx.metrics)
    later = report_doc(
        agent.device_id,
        "committed",
        to_version=1,
        rollout_id=rollout["id"],
        at=format_time(fleet.clock.now),
    )
    sink.ingest([(agent.device_id, StatusReport.from_dict(later))])
    m = scrape(fleet)
    assert value(m, "ferry_status_reports_total", transport="http", outcome="accepted") == 1
    assert value(m, "ferry_status_reports_total", transport="http", outcome="duplicate") == 1
    assert value(m, "ferry_status_reports_total", transport="mqtt", outcome="accepted") == 1
    assert value(m, "ferry_status_report_lag_seconds_sum", transport="http") == 120
    assert value(m, "ferry_status_report_lag_seconds_bucket", transport="http", le="60.0") == 0
    assert value(m, "ferry_status_report_lag_seconds_bucket", transport="http", le="300.0") == 1
    assert value(m, "ferry_status_report_lag_seconds_count", transport="mqtt") == 1


def test_a_publish_the_client_refuses_is_counted() -> None:
    link = MqttLink("mqtt://127.0.0.1:9", client_id="t")
    errors: list[int] = []
    link.on_publish_error = lambda: errors.append(1)
    link.client.max_queued_messages_set(1)
    link.publish("ferry/v1/x", b"1")  # not connected: queued, not an error
    assert errors == []
    link.publish("ferry/v1/x", b"2")  # the queue is full: refused
    assert errors == [1]
    assert mqtt.MQTT_ERR_QUEUE_SIZE != mqtt.MQTT_ERR_SUCCESS


def test_metric_names_follow_prometheus_conventions(fleet: Fleet) -> None:
    live_rollout(fleet)
    text = fleet.client.get("/metrics").text
    names = set(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    assert names
    for name, kind in names:
        if name.endswith("_created"):  # the client library's creation-time series
            continue
        assert re.fullmatch(r"ferry_[a-z0-9_]+", name), name
        if kind == "counter":
            assert not name.endswith("_total_total"), name
        if "duration" in name or "lag" in name:
            assert name.endswith("_seconds"), name


def test_readyz_is_ready_when_every_dependency_is(fleet: Fleet) -> None:
    r = fleet.client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ready",
        "checks": {"database": "ok", "blobs": "ok", "mqtt": "disabled"},
    }


def test_readyz_names_a_missing_blob_store(fleet: Fleet) -> None:
    shutil.rmtree(fleet.app.state.ctx.settings.blob_dir)
    r = fleet.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["blobs"].endswith("is not a directory")
    assert fleet.client.get("/healthz").status_code == 200  # alive, just not ready


def test_readyz_names_a_lost_broker_or_subscription(fleet: Fleet) -> None:
    class Down:
        def ready(self) -> bool:
            return False

    checks = readiness(fleet.app.state.ctx, Down())
    assert checks["mqtt"].startswith("broker not connected")
    fleet.app.state.mqtt = Down()
    assert fleet.client.get("/readyz").status_code == 503
