"""The last working admin token cannot be revoked: a fuzzer revoked its own admin token
and locked everyone out of the server (only `ferry admin create-token` on the host
could get back in)."""

from __future__ import annotations

from tests.server.conftest import API, Harness


def _own_id(h: Harness) -> int:
    rows = h.client.get(f"{API}/tokens", headers=h.admin).json()
    return int(next(row["id"] for row in rows if row["name"] == "bootstrap-admin"))


def test_the_last_admin_token_cannot_revoke_itself(h: Harness) -> None:
    r = h.client.delete(f"{API}/tokens/{_own_id(h)}", headers=h.admin)
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "conflict" and "last admin token" in error["message"]
    assert h.client.get(f"{API}/whoami", headers=h.admin).status_code == 200


def test_with_a_second_admin_the_first_can_go_but_not_both(h: Harness) -> None:
    second = h.token("admin", name="second-admin")
    second_id = max(row["id"] for row in h.client.get(f"{API}/tokens", headers=h.admin).json())
    assert h.client.delete(f"{API}/tokens/{_own_id(h)}", headers=second).status_code == 204
    assert h.client.get(f"{API}/whoami", headers=h.admin).status_code == 401
    r = h.client.delete(f"{API}/tokens/{second_id}", headers=second)
    assert r.status_code == 409 and "last admin token" in r.json()["error"]["message"]


def test_an_expired_or_non_admin_token_does_not_count_as_a_spare(h: Harness) -> None:
    h.token("operator")
    r = h.client.post(
        f"{API}/tokens",
        json={
            "name": "old-admin",
            "role": "admin",
            "namespaces": ["*"],
            "expires_at": "2000-01-01T00:00:00Z",
        },
        headers=h.admin,
    )
    assert r.status_code in (201, 422), r.text  # an already expired admin is no spare either way
    assert h.client.delete(f"{API}/tokens/{_own_id(h)}", headers=h.admin).status_code == 409


def test_other_tokens_revoke_as_before(h: Harness) -> None:
    h.token("viewer", name="v")
    viewer_id = max(row["id"] for row in h.client.get(f"{API}/tokens", headers=h.admin).json())
    assert h.client.delete(f"{API}/tokens/{viewer_id}", headers=h.admin).status_code == 204
    assert h.client.delete(f"{API}/tokens/{viewer_id}", headers=h.admin).status_code == 204
