"""Sign-in: the token lives only in an HttpOnly SameSite=Strict cookie; POSTs need CSRF."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from tests.dashboard.helpers import browser, csrf_of, live_rollout, secret_of
from tests.fleet.harness import Fleet


def test_sign_in_sets_an_httponly_strict_cookie_and_no_token_in_the_redirect(fleet: Fleet) -> None:
    client = TestClient(fleet.app)
    secret = secret_of(fleet.token("viewer"))
    r = client.post(
        "/ui/login", data={"token": secret, "next": "/ui/fleet"}, follow_redirects=False
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/fleet"
    assert secret not in r.headers["location"]
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain http here; see the https test
    assert client.get("/ui/rollouts").status_code == 200


def test_cookie_is_secure_when_served_over_https(fleet: Fleet) -> None:
    client = TestClient(fleet.app, base_url="https://testserver")
    r = client.post("/ui/login", data={"token": secret_of(fleet.admin)}, follow_redirects=False)
    assert "Secure" in r.headers["set-cookie"]


def test_a_page_without_a_session_redirects_to_sign_in(fleet: Fleet) -> None:
    r = TestClient(fleet.app).get("/ui/rollouts", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login?next=/ui/rollouts"


@pytest.mark.parametrize("token", ["fry_not-a-real-token", "", "frd_device-credential"])
def test_an_unknown_token_or_a_device_credential_cannot_sign_in(fleet: Fleet, token: str) -> None:
    client = TestClient(fleet.app)
    r = client.post("/ui/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 401
    assert "ferry_session" not in r.headers.get("set-cookie", "")


def test_a_real_device_credential_cannot_sign_in(fleet: Fleet) -> None:
    agent = fleet.devices(1)[0]
    r = TestClient(fleet.app).post(
        "/ui/login", data={"token": agent.credential}, follow_redirects=False
    )
    assert r.status_code == 401


def test_an_offsite_next_is_ignored(fleet: Fleet) -> None:
    client = TestClient(fleet.app)
    r = client.post(
        "/ui/login",
        data={"token": secret_of(fleet.admin), "next": "//evil.example/ui/x"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/ui/rollouts"


def test_a_revoked_token_loses_its_session(fleet: Fleet) -> None:
    headers = fleet.token("viewer")
    client = browser(fleet, headers)
    tokens = fleet.client.get("/api/v1/tokens", headers=fleet.admin).json()
    viewer = next(t for t in tokens if t["role"] == "viewer")
    assert fleet.client.delete(
        f"/api/v1/tokens/{viewer['id']}", headers=fleet.admin
    ).status_code in (200, 204)
    assert client.get("/ui/rollouts", follow_redirects=False).status_code == 303


def test_an_action_post_without_the_csrf_token_is_refused(fleet: Fleet) -> None:
    rollout, _ = live_rollout(fleet)
    client = browser(fleet, fleet.token("operator"))
    r = client.post(f"/ui/rollouts/{rollout['id']}/pause", data={}, follow_redirects=False)
    assert r.status_code == 403
    r = client.post(
        f"/ui/rollouts/{rollout['id']}/pause", data={"csrf": "0" * 64}, follow_redirects=False
    )
    assert r.status_code == 403
    assert fleet.status(rollout["id"])["rollout"]["state"] == "running"


def test_a_csrf_token_of_another_session_is_refused(fleet: Fleet) -> None:
    rollout, _ = live_rollout(fleet)
    other = browser(fleet, fleet.token("operator"))
    stolen = csrf_of(other.get(f"/ui/rollouts/{rollout['id']}").text)
    client = browser(fleet, fleet.token("operator"))
    r = client.post(
        f"/ui/rollouts/{rollout['id']}/pause", data={"csrf": stolen}, follow_redirects=False
    )
    assert r.status_code == 403
    assert fleet.status(rollout["id"])["rollout"]["state"] == "running"


def test_a_cross_origin_post_is_refused_even_with_the_csrf_token(fleet: Fleet) -> None:
    rollout, _ = live_rollout(fleet)
    client = browser(fleet, fleet.token("operator"))
    csrf = csrf_of(client.get(f"/ui/rollouts/{rollout['id']}").text)
    r = client.post(
        f"/ui/rollouts/{rollout['id']}/pause",
        data={"csrf": csrf},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert r.status_code == 403
    assert fleet.status(rollout["id"])["rollout"]["state"] == "running"


def test_sign_out_needs_csrf_and_drops_the_cookie(fleet: Fleet) -> None:
    client = browser(fleet, fleet.admin)
    assert client.post("/ui/logout", data={}, follow_redirects=False).status_code == 403
    csrf = csrf_of(client.get("/ui/rollouts").text)
    r = client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert client.get("/ui/rollouts", follow_redirects=False).status_code == 303


def test_the_token_is_never_logged(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    secret = secret_of(fleet.admin)
    logger = logging.getLogger("ferry")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG, logger="ferry"):
            client = browser(fleet, fleet.admin)
            client.get("/ui/rollouts")
            client.post("/ui/login", data={"token": secret + "x"})
    finally:
        logger.removeHandler(caplog.handler)
    assert caplog.records, "the access log recorded nothing"
    text = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert secret not in text


def test_pages_carry_a_strict_content_security_policy(fleet: Fleet) -> None:
    r = browser(fleet, fleet.admin).get("/ui/rollouts")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"
