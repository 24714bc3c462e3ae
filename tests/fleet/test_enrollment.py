"""Enrolment tokens: one-time, multi-use limit, expiry, namespaces; the enrolment answer."""

from __future__ import annotations

from ferry.protocol.verify import trust_first_keyring
from ferry.server.fleet.enrollment import REENROLLMENT_APPROVAL_S
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
    assert (
        fleet.client.delete(f"{API}/enrollment-tokens/{token_id}", headers=fleet.admin).status_code
        == 204
    )
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
    assert (
        fleet.client.post(f"{API}/enrollment-tokens", json=body, headers=audio_operator).status_code
        == 403
    )
    viewer = fleet.token("viewer")
    assert (
        fleet.client.post(f"{API}/enrollment-tokens", json=body, headers=viewer).status_code == 403
    )
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


def _uses(fleet: Fleet, name: str = "batch") -> int:
    rows = fleet.client.get(f"{API}/enrollment-tokens", headers=fleet.admin).json()
    return int(next(row["uses"] for row in rows if row["name"] == name))


def test_a_token_holder_cannot_take_over_an_enrolled_device_id(fleet: Fleet) -> None:
    """Any enrolment token of the namespace used to re-enrol an existing id, locking the real
    device out and handing the intruder its desired state."""
    token = fleet.enrollment_token()
    real = fleet.enroll(token, "cam-1")
    used = _uses(fleet)
    r = fleet.enroll(token, "cam-1", expect=409)
    error = r.json()["error"]
    assert error["code"] == "conflict" and "'cam-1'" in error["message"]
    assert error["details"] == {"device_id": "cam-1"}
    assert fleet.client.get(f"{API}/device/desired-state", headers=real.headers).status_code == 200
    assert _uses(fleet) == used  # a refused enrolment does not spend a use of the token


def test_reenrolment_with_the_current_credential_rotates_it(fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    first = fleet.enroll(token, "cam-1")
    second = fleet.enroll(token, "cam-1", credential=first.credential)
    path = f"{API}/device/desired-state"
    assert fleet.client.get(path, headers=first.headers).status_code == 401
    assert fleet.client.get(path, headers=second.headers).status_code == 200


def test_reenrolment_with_a_stale_or_foreign_credential_is_refused(fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    first = fleet.enroll(token, "cam-1")
    other = fleet.enroll(token, "cam-2")
    second = fleet.enroll(token, "cam-1", credential=first.credential)
    for wrong in (first.credential, other.credential, "frd_guess"):
        r = fleet.enroll(token, "cam-1", credential=wrong, expect=403)
        assert "'cam-1'" in r.json()["error"]["message"]
    assert (
        fleet.client.get(f"{API}/device/desired-state", headers=second.headers).status_code == 200
    )


def test_an_operator_approval_allows_exactly_one_reenrolment(fleet: Fleet) -> None:
    """A device that lost its credential (wiped storage) comes back with an operator's word."""
    token = fleet.enrollment_token()
    lost = fleet.enroll(token, "cam-1")
    r = fleet.client.post(f"{API}/devices/cam-1/approve-reenrollment", headers=fleet.admin)
    assert r.status_code == 200, r.text
    assert r.json()["reenrollment_approved_until"]
    back = fleet.enroll(token, "cam-1")
    assert fleet.client.get(f"{API}/device/desired-state", headers=lost.headers).status_code == 401
    assert fleet.client.get(f"{API}/device/desired-state", headers=back.headers).status_code == 200
    fleet.enroll(token, "cam-1", expect=409)  # the approval was used up


def test_an_approval_expires_and_needs_an_operator_of_the_namespace(fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    fleet.enroll(token, "cam-1")
    path = f"{API}/devices/cam-1/approve-reenrollment"
    viewer = fleet.token("viewer", ["vision"])
    assert fleet.client.post(path, headers=viewer).status_code == 403
    assert fleet.client.post(path, headers=fleet.admin).status_code == 200
    fleet.clock.advance(REENROLLMENT_APPROVAL_S + 1)
    fleet.enroll(token, "cam-1", expect=409)


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
        {
            "namespace": "vision",
            "name": "x",
            "expires_at": "2027-01-01T00:00:00Z",
            "expires_in_s": 5,
        },
        {"namespace": "Vision!", "name": "x"},
        {"namespace": "vision", "name": ""},
    ]
    for body in bad:
        r = fleet.client.post(f"{API}/enrollment-tokens", json=body, headers=fleet.admin)
        assert r.status_code == 422, (body, r.text)
    r = fleet.client.post(
        f"{API}/enrollment-tokens", json={"namespace": "nope", "name": "x"}, headers=fleet.admin
    )
    assert r.status_code == 404
    assert (
        fleet.client.delete(f"{API}/enrollment-tokens/999", headers=fleet.admin).status_code == 404
    )
    assert (
        fleet.client.get(f"{API}/enrollment-tokens", headers=bearer("fry_nonsense")).status_code
        == 401
    )
