"""Every route × every role (and no token): 401 without a token, 403 for a role the
route does not allow, anything else for an allowed role.

Routes are enumerated from the app, so a new route fails this test until it has
a row in `ACCESS` — that is the point: no endpoint ships without a decided rule.
Other parts keep their rows next to their tests: an ``ACCESS`` dict in
``tests/<part>/access_rules.py`` is merged in (same values as below).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from fastapi.routing import iter_route_contexts

from tests.server.conftest import Harness

ROLES = ("admin", "publisher", "approver", "operator", "viewer")
PUBLIC = "public"
ANY = "any-token"
DEVICE_ONLY = "device-only"  # device credentials only: every API token gets 401 or 403
READ = {"admin", "publisher", "approver", "operator", "viewer"}
ADMIN = {"admin"}
PUBLISH = {"admin", "publisher"}
STAGE = {"admin", "publisher", "approver"}

ACCESS: dict[tuple[str, str], str | set[str]] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/api/v1/keyring"): PUBLIC,
    ("GET", "/api/v1/keyring/{version}"): PUBLIC,
    ("GET", "/api/v1/whoami"): ANY,
    ("POST", "/api/v1/tokens"): ADMIN,
    ("GET", "/api/v1/tokens"): ADMIN,
    ("DELETE", "/api/v1/tokens/{token_id}"): ADMIN,
    ("POST", "/api/v1/namespaces"): ADMIN,
    ("GET", "/api/v1/namespaces"): READ,
    ("GET", "/api/v1/namespaces/{ns}"): READ,
    ("POST", "/api/v1/models"): PUBLISH,
    ("GET", "/api/v1/models"): READ,
    ("GET", "/api/v1/models/{ns}/{name}"): READ,
    ("POST", "/api/v1/models/{ns}/{name}/versions"): PUBLISH,
    ("GET", "/api/v1/models/{ns}/{name}/versions"): READ,
    ("GET", "/api/v1/models/{ns}/{name}/versions/{ref}"): READ,
    ("GET", "/api/v1/models/{ns}/{name}/versions/{ref}/manifest"): READ,
    ("POST", "/api/v1/models/{ns}/{name}/versions/{ref}/tags"): PUBLISH,
    ("POST", "/api/v1/models/{ns}/{name}/versions/{ref}/stage"): STAGE,
    ("PUT", "/api/v1/models/{ns}/{name}/aliases/{alias}"): PUBLISH,
    ("DELETE", "/api/v1/models/{ns}/{name}/aliases/{alias}"): PUBLISH,
    ("GET", "/api/v1/versions"): READ,
    ("HEAD", "/api/v1/blobs/{sha256}"): READ,
    ("GET", "/api/v1/blobs/{sha256}"): READ,
    ("PUT", "/api/v1/blobs/{sha256}"): PUBLISH,
    ("GET", "/api/v1/manifests/{sha256}"): READ,
    ("GET", "/api/v1/audit"): ADMIN,
    ("GET", "/api/v1/audit/export"): ADMIN,
    ("GET", "/api/v1/audit/verify"): ADMIN,
    ("POST", "/api/v1/webhooks"): ADMIN,
    ("GET", "/api/v1/webhooks"): ADMIN,
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): ADMIN,
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"): ADMIN,
}


def _merge_part_rules() -> None:
    """Add the ``ACCESS`` rows of ``tests/<part>/access_rules.py`` files."""
    for path in sorted(Path(__file__).resolve().parents[1].glob("*/access_rules.py")):
        module = importlib.import_module(f"tests.{path.parent.name}.access_rules")
        ACCESS.update(module.ACCESS)


_merge_part_rules()
PARAMS = {
    "ns": "vision",
    "name": "resnet",
    "ref": "1",
    "alias": "champion",
    "sha256": "a" * 64,
    "version": "1",
    "token_id": "999999",
    "webhook_id": "999999",
}


# The dashboard signs people in with a cookie, not a bearer token: tests/dashboard walks it.
DASHBOARD = ("/ui", "/favicon.ico")


def _routes(h: Harness) -> list[tuple[str, str]]:
    found = set()
    for route in iter_route_contexts(h.app.routes):
        if route.path == "/" or route.path.startswith(DASHBOARD):
            continue
        for method in route.methods or ():
            if method == "HEAD" and "GET" in (route.methods or ()):
                continue  # Starlette's implicit HEAD for GET routes
            found.add((method, route.path))
    return sorted(found)


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: PARAMS.get(m.group(1), "1"), path)


def test_every_route_has_an_access_rule(h: Harness) -> None:
    missing = [r for r in _routes(h) if r not in ACCESS]
    assert missing == [], f"add these routes to ACCESS in {__file__}"


def test_every_route_with_every_role(h: Harness) -> None:
    headers = {role: h.token(role, ["*"]) for role in ROLES}
    problems: list[str] = []
    for method, path in _routes(h):
        rule = ACCESS.get((method, path))
        if rule is None:
            continue
        url = _url(path)
        body = {} if method in ("POST", "PUT") else None
        anonymous = h.client.request(method, url, json=body)
        if rule == PUBLIC:
            if anonymous.status_code in (401, 403):
                problems.append(f"{method} {path}: public but {anonymous.status_code}")
            continue
        if anonymous.status_code != 401:
            problems.append(f"{method} {path}: no token gave {anonymous.status_code}")
        if rule == DEVICE_ONLY:
            for role in ROLES:
                status = h.client.request(method, url, json=body, headers=headers[role]).status_code
                if status not in (401, 403):
                    problems.append(f"{method} {path}: device-only but {role} got {status}")
            continue
        for role in ROLES:
            status = h.client.request(method, url, json=body, headers=headers[role]).status_code
            allowed = rule == ANY or role in rule  # type: ignore[operator]
            if allowed and status in (401, 403):
                problems.append(f"{method} {path}: {role} should pass, got {status}")
            if not allowed and status != 403:
                problems.append(f"{method} {path}: {role} should get 403, got {status}")
    assert problems == []


@pytest.mark.parametrize("secret", ["fry_not-a-real-token", "garbage", "frd_unknown-device"])
def test_unknown_tokens_are_401(h: Harness, secret: str) -> None:
    r = h.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"


def test_revoked_and_expired_tokens_are_401(h: Harness) -> None:
    created = h.client.post(
        "/api/v1/tokens", json={"name": "tmp", "role": "viewer"}, headers=h.admin
    ).json()
    bearer = {"Authorization": f"Bearer {created['token']}"}
    assert h.client.get("/api/v1/whoami", headers=bearer).status_code == 200
    h.client.delete(f"/api/v1/tokens/{created['id']}", headers=h.admin)
    assert h.client.get("/api/v1/whoami", headers=bearer).status_code == 401
    expired = h.client.post(
        "/api/v1/tokens",
        json={"name": "old", "role": "viewer", "expires_at": "2020-01-01T00:00:00Z"},
        headers=h.admin,
    ).json()
    r = h.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {expired['token']}"})
    assert r.status_code == 401


def test_token_list_never_shows_secrets_and_db_holds_only_hashes(h: Harness) -> None:
    import sqlite3

    created = h.client.post(
        "/api/v1/tokens", json={"name": "x", "role": "viewer"}, headers=h.admin
    ).json()
    listing = h.client.get("/api/v1/tokens", headers=h.admin).text
    assert created["token"] not in listing and "token_hash" not in listing
    dump = "\n".join(sqlite3.connect(h.settings.data_dir / "ferry.db").iterdump())
    assert created["token"] not in dump
