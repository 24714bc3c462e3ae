"""Device records: revoke (401 everywhere, broker access withdrawn), tags, listing, history."""

from __future__ import annotations

from ferry.server.core.db import session_scope
from ferry.server.fleet import broker_credentials
from ferry.server.fleet.credentials import mosquitto_hash
from tests.fleet.harness import API, Fleet


def test_revoked_device_gets_401_everywhere_and_loses_broker_access(fleet: Fleet) -> None:
    a, b = fleet.devices(2)
    engine = fleet.app.state.ctx.engine
    with session_scope(engine) as session:
        assert [c.username for c in broker_credentials(session)] == [a.device_id, b.device_id]
    syncs = fleet.broker.count
    r = fleet.client.post(f"{API}/devices/{a.device_id}/revoke", headers=fleet.admin)
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert fleet.broker.count == syncs + 1
    assert fleet.client.get(f"{API}/device/desired-state", headers=a.headers).status_code == 401
    assert (
        fleet.client.post(
            f"{API}/device/status", json={"reports": []}, headers=a.headers
        ).status_code
        == 401
    )
    assert fleet.client.get(f"{API}/keyring", headers=a.headers).status_code == 200  # public
    with session_scope(engine) as session:
        assert [c.username for c in broker_credentials(session)] == [b.device_id]
    fleet.enroll(fleet.enrollment_token(), a.device_id, expect=403)


def test_broker_password_hash_is_mosquitto_pbkdf2() -> None:
    text = mosquitto_hash("secret", salt=b"0123456789ab")
    assert text.startswith("$7$101$") and text.count("$") == 4
    assert mosquitto_hash("secret", salt=b"0123456789ab") == text != mosquitto_hash("secret")


def test_tags_change_selection_and_groups(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    path = f"{API}/devices/{agent.device_id}/tags"
    r = fleet.client.post(
        path, json={"add": {"region": "eu", "channel": "canary"}}, headers=fleet.admin
    )
    assert r.status_code == 200, r.text
    assert r.json()["groups"] == ["all", "channel:canary", "hw:x86_64", "region:eu"]
    listed = fleet.client.get(
        f"{API}/devices", params={"selector": "region=eu"}, headers=fleet.admin
    ).json()
    assert [d["id"] for d in listed] == [agent.device_id]
    fleet.client.post(path, json={"remove": ["region"]}, headers=fleet.admin)
    assert (
        fleet.client.get(
            f"{API}/devices", params={"selector": "region=eu"}, headers=fleet.admin
        ).json()
        == []
    )
    r = fleet.client.post(path, json={"add": {"hw": "other"}}, headers=fleet.admin)
    assert r.status_code == 422


def test_device_history_lists_reports_newest_first(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    fleet.report(agent, "downloading", to_version=1)
    fleet.clock.advance(5)
    fleet.report(agent, "committed", to_version=1)
    shown = fleet.client.get(f"{API}/devices/{agent.device_id}", headers=fleet.admin).json()
    assert [h["state"] for h in shown["history"]] == ["committed", "downloading"]
    assert shown["slots"][0]["installed_version"] == 1


def test_device_endpoints_check_roles_and_input(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    viewer = fleet.token("viewer")
    assert fleet.client.get(f"{API}/devices", headers=viewer).status_code == 200
    assert fleet.client.get(f"{API}/devices", headers=agent.headers).status_code == 403
    assert (
        fleet.client.post(f"{API}/devices/{agent.device_id}/revoke", headers=viewer).status_code
        == 403
    )
    fleet.namespace("audio")
    outsider = fleet.token("operator", ["audio"])
    assert fleet.client.get(f"{API}/devices/{agent.device_id}", headers=outsider).status_code == 404
    for path in ("", "/tags", "/revoke"):
        method = "GET" if not path else "POST"
        r = fleet.client.request(method, f"{API}/devices/nope{path}", json={}, headers=fleet.admin)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    for params in ({"selector": "region"}, {"limit": 0}, {"selector": "a=b,a=c"}):
        assert (
            fleet.client.get(f"{API}/devices", params=params, headers=fleet.admin).status_code
            == 422
        )
    assert (
        fleet.client.post(
            f"{API}/devices/{agent.device_id}/tags", json={"add": "x"}, headers=fleet.admin
        ).status_code
        == 422
    )
