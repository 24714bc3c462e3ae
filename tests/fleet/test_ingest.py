"""Status ingest: idempotent by report_id, for HTTP and the shared function alike."""

from __future__ import annotations

from ferry.protocol.documents import StatusReport
from ferry.server.checkin.ingest import ingest_reports
from ferry.server.core.db import session_scope
from tests.fleet.harness import API, Fleet, report_doc


def test_duplicate_reports_are_counted_not_applied_twice(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    first = fleet.report(agent, "committed", to_version=1, report_id="rep-1")
    assert first == {"accepted": ["rep-1"], "duplicates": []}
    again = fleet.report(agent, "committed", to_version=1, report_id="rep-1")
    assert again == {"accepted": [], "duplicates": ["rep-1"]}
    doc = report_doc(
        agent.device_id, "failed", to_version=2, at="2026-11-25T03:00:00Z", report_id="rep-2"
    )
    r = fleet.client.post(
        f"{API}/device/status", json={"reports": [doc, doc]}, headers=agent.headers
    )
    assert r.json() == {"accepted": ["rep-2"], "duplicates": ["rep-2"]}
    history = fleet.client.get(f"{API}/devices/{agent.device_id}", headers=fleet.admin).json()
    assert sorted(h["report_id"] for h in history["history"]) == ["rep-1", "rep-2"]


def test_mqtt_path_shares_the_same_ingest(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    fleet.report(agent, "staged", to_version=3, report_id="over-http")
    reports = [
        StatusReport.from_dict(
            report_doc(
                agent.device_id, "staged", to_version=3, at="2026-11-25T03:00:00Z", report_id=rid
            )
        )
        for rid in ("over-http", "over-mqtt")
    ]
    with session_scope(fleet.app.state.ctx.engine) as session:
        result = ingest_reports(session, agent.device_id, reports, fleet.clock.now)
    assert (result.accepted, result.duplicates) == (["over-mqtt"], ["over-http"])
    shown = fleet.client.get(f"{API}/devices/{agent.device_id}", headers=fleet.admin).json()
    assert shown["slots"][0]["staged_version"] == 3 and shown["slots"][0]["state"] == "staged"


def test_report_for_another_device_is_403_and_nothing_is_stored(fleet: Fleet) -> None:
    a, b = fleet.devices(2)
    own = report_doc(a.device_id, "committed", to_version=1, at="2026-11-25T03:00:00Z")
    other = report_doc(b.device_id, "committed", to_version=1, at="2026-11-25T03:00:00Z")
    r = fleet.client.post(f"{API}/device/status", json={"reports": [own, other]}, headers=a.headers)
    assert r.status_code == 403
    shown = fleet.client.get(f"{API}/devices/{a.device_id}", headers=fleet.admin).json()
    assert shown["history"] == []


def test_malformed_reports_are_422(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    good = report_doc(agent.device_id, "committed", to_version=1, at="2026-11-25T03:00:00Z")
    bad_bodies = [
        {"reports": [{**good, "state": "exploded"}]},
        {"reports": [{**good, "at": "yesterday"}]},
        {"reports": [{**good, "timings": {"x": -1}}]},
        {"reports": [{**good, "_type": "keyring"}]},
        {"reports": [good] * 501},
        {"reports": "nope"},
        {},
    ]
    for body in bad_bodies:
        r = fleet.client.post(f"{API}/device/status", json=body, headers=agent.headers)
        assert r.status_code == 422, r.text
    assert (
        fleet.client.post(
            f"{API}/device/status", json={"reports": []}, headers=fleet.admin
        ).status_code
        == 403
    )
