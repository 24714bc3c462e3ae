"""Enrolment tokens: one-time, multi-use limit, expiry, namespaces; the enrolment answer."""

from __future__ import annotations

from ferry.protocol.verify import trust_first_keyring
from tests.fleet.harness import API, Fleet, bearer


def test_one_time_token_enrols_exactly_one_device(fleet: Fleet) -> None:
    token = fleet.enrollment_token(max_uses=1)
    fleet.enroll(token, "cam-1")
    r = fleet.enroll(token, "cam-2", expect=401)
    assert r.json()["error"]["code"] == "unauthenticated"
    assert "used up" in r.json()["error"]["message"]


def test_multi_use_token_stops_at_its_limit(fleet: Fleet) -> None:
    token = fleet.enrollment_token(max_uses=3)
    for i in range(3):
        fleet.enroll(token, f"cam-{i}")
    fleet.enroll(token, "cam-3", expect=401)
    listed = fleet.client.get(f"{API}/enrollment-tokens", headers=fleet.admin).json()
    assert [(t["uses"], t["max_uses"]) for t in listed] == [(3, 3)]
    assert "token" not in listed[0]


def test_expired_token_is_refused(fleet: Fleet) -> None:
    token = fleet.enrollment_token(expires_in_s=60)
    fleet.clock.advance(59)
    fleet.enroll(token, "early")
    fleet.clock.advance(1)
    r = fleet.enroll(token, "late", expect=401)
    assert "expired" in r.json()["error"]["message"]


def test_revoked_and_unknown_tokens_are_refused(fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    token_id = fleet.client.get(f"{API}/enrollment-tokens", headers=fleet.admin).json()[0]["id"]
    assert fleet.client.delete(f"{API}/enrollment-tokens/{token_id}",
                               headers=fleet.admin).status_code == 204
    fleet.enroll(token, "cam", expect=401)
    fleet.enroll("fre_not-a-token", "cam", expect=401)


def test_token_of_another_namespace_cannot_take_over_a_device(fleet: Fleet) -> None:
    fleet.namespace("audio")
    fleet.enroll(fleet.enrollment_token("vision"), "cam-1")
    r = fleet.enroll(fleet.enrollment_token("audio"), "cam-1", expect=403)
    assert "another namespace" in r.json()["error"]["message"]


def test_operator_scoped_elsewhere_cannot_mint_tokens(fleet: Fleet) -> None:
    fleet.namespace("audio")
    audio_operator = fleet.token("operator", ["audio"])
    body = {"namespace": "vision", "name": "x"}
    assert fleet.client.post(f"{API}/enrollment-tokens", json=body,
                             headers=audio_operator).status_code == 403
    viewer = fleet.token("viewer")
    assert fleet.client.post(f"{API}/enrollment-tokens", json=body,
                             headers=viewer).status_code == 403
    assert fleet.client.post(f"{API}/enrollment-tokens", json=body).status_code == 401


def test_enrolment_answers_credential_keyring_and_groups(fleet: Fleet) -> None:
    token = fleet.enrollment_token(tags={"channel": "canary"})
    agent = fleet.enroll(token, None, hardware="jetson-orin", tags={"region": "eu"})
    assert agent.device_id.startswith("dev-") and agent.credential.startswith("frd_")
    assert agent.groups == ["all", "channel:canary", "hw:jetson-orin", "region:eu"]
    keyring = trust_first_keyring(agent.keyring, fleet.clock.now)
    assert keyring.version == 1
    assert fleet.broker.count == 1


def test_mqtt_login_is_offered_only_when_mqtt_is_configured(fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    body = {"enrollment_token": token, "hardware": "x86_64"}
    assert fleet.client.post(f"{API}/device/enroll", json=body).json()["mqtt"] is None
    fleet.runtime.broker_url = "mqtt://broker:1884"
    mqtt = fleet.client.post(f"{API}/device/enroll", json=body).json()["mqtt"]
    assert mqtt["url"] == "mqtt://broker:1884" and mqtt["password"]


def test_reenrolment_rotates_the_credential(fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    first = fleet.enroll(token, "cam-1")
    second = fleet.enroll(token, "cam-1")
    path = f"{API}/device/desired-state"
    assert fleet.client.get(path, headers=first.headers).status_code == 401
    assert fleet.client.get(path, headers=second.headers).status_code == 200


def test_bad_enrolment_input_is_422(fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    bad = [
        {"enrollment_token": token, "device_id": "a/b", "hardware": "x86_64"},
        {"enrollment_token": token, "device_id": "a+#", "hardware": "x86_64"},
        {"enrollment_token": token, "hardware": "x86 64"},
        {"enrollment_token": token},
        {"enrollment_token": token, "hardware": "x86_64", "tags": {"Bad Key": "v"}},
        {"enrollment_token": token, "hardware": "x86_64", "tags": {"k": "v=w"}},
        {"enrollment_token": token, "hardware": "x86_64", "surprise": 1},
    ]
    for body in bad:
        r = fleet.client.post(f"{API}/device/enroll", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "validation_error"


def test_bad_token_requests_are_422(fleet: Fleet) -> None:
    bad = [
        {"namespace": "vision", "name": "x", "max_uses": 0},
        {"namespace": "vision", "name": "x", "expires_at": "tomorrow"},
        {"namespace": "vision", "name": "x", "expires_at": "2027-01-01T00:00:00Z",
         "expires_in_s": 5},
        {"namespace": "Vision!", "name": "x"},
        {"namespace": "vision", "name": ""},
    ]
    for body in bad:
        r = fleet.client.post(f"{API}/enrollment-tokens", json=body, headers=fleet.admin)
        assert r.status_code == 422, (body, r.text)
    r = fleet.client.post(f"{API}/enrollment-tokens", json={"namespace": "nope", "name": "x"},
                          headers=fleet.admin)
    assert r.status_code == 404
    assert fleet.client.delete(f"{API}/enrollment-tokens/999",
                               headers=fleet.admin).status_code == 404
    assert fleet.client.get(f"{API}/enrollment-tokens",
                            headers=bearer("fry_nonsense")).status_code == 401
