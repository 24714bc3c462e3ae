"""Stage transitions: the legal moves, who may make them, and the distinct-approver rule."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ferry.server.registry.schemas import Stage
from ferry.server.registry.service import TRANSITIONS
from tests.server.conftest import API, Harness

STAGE = f"{API}/models/vision/resnet/versions/1/stage"


def _move(h: Harness, stage: str, headers: dict[str, str]) -> int:
    return h.client.post(STAGE, json={"stage": stage}, headers=headers).status_code


def test_publisher_reaches_staging_but_not_production(h: Harness) -> None:
    publisher = h.token("publisher", ["vision"])
    h.register(headers=publisher)
    assert _move(h, "Staging", publisher) == 200
    assert _move(h, "Production", publisher) == 403


def test_production_only_through_staging(h: Harness) -> None:
    h.register()
    r = h.client.post(STAGE, json={"stage": "Production"}, headers=h.admin)
    assert r.status_code == 409 and r.json()["error"]["details"]["legal"] == ["Staging", "Archived"]


def test_full_lifecycle_by_an_approver(h: Harness) -> None:
    h.register(headers=h.token("publisher", ["vision"]))
    approver = h.token("approver", ["vision"])
    for stage in ("Staging", "Production", "Archived"):
        assert _move(h, stage, approver) == 200, stage
    version = h.client.get(f"{API}/models/vision/resnet/versions/1", headers=h.admin).json()
    assert version["stage"] == "Archived" and version["stage_changed_at"]
    assert _move(h, "Production", approver) == 409


def test_distinct_approver_is_enforced_when_the_namespace_asks(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory()
    h.namespace("strict", require_distinct_approver=True)
    h.model("strict", "m")
    admin_publisher = h.admin
    h.register(ns="strict", name="m", headers=admin_publisher)
    url = f"{API}/models/strict/m/versions/1/stage"
    assert h.client.post(url, json={"stage": "Staging"}, headers=h.admin).status_code == 200
    own = h.client.post(url, json={"stage": "Production"}, headers=h.admin)
    assert (
        own.status_code == 403
        and "other than the version's publisher" in own.json()["error"]["message"]
    )
    other = h.token("approver", ["strict"])
    assert h.client.post(url, json={"stage": "Production"}, headers=other).status_code == 200


def test_own_approval_is_fine_where_the_namespace_allows_it(h: Harness) -> None:
    h.register()
    assert _move(h, "Staging", h.admin) == 200
    assert _move(h, "Production", h.admin) == 200


def test_viewer_and_operator_cannot_change_stages(h: Harness) -> None:
    h.register()
    for role in ("viewer", "operator"):
        assert _move(h, "Staging", h.token(role)) == 403


def test_token_scoped_to_another_namespace_is_refused(h: Harness) -> None:
    h.register()
    assert _move(h, "Staging", h.token("approver", ["other"])) == 403


@pytest.mark.parametrize("frm,to", sorted(TRANSITIONS))
def test_every_declared_transition_is_reachable(h: Harness, frm: Stage, to: Stage) -> None:
    h.register()
    path = {
        Stage.NONE: [],
        Stage.STAGING: ["Staging"],
        Stage.PRODUCTION: ["Staging", "Production"],
        Stage.ARCHIVED: ["Archived"],
    }[frm]
    for stage in path:
        assert _move(h, stage, h.admin) == 200
    assert _move(h, to.value, h.admin) == 200


def test_stage_change_is_audited(h: Harness) -> None:
    h.register()
    h.client.post(STAGE, json={"stage": "Staging", "comment": "ready for QA"}, headers=h.admin)
    entries = h.client.get(f"{API}/audit", headers=h.admin).json()
    last = entries[-1]
    assert last["action"] == "version.stage" and last["target"] == "vision/resnet@1"
    assert last["details"] == {"from": "None", "to": "Staging", "comment": "ready for QA"}
