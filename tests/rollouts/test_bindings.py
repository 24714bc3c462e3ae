"""Registry → fleet: moving a bound alias plans a rollout, after compatibility checks."""

from __future__ import annotations

from typing import Any

from tests.fleet.harness import API, Fleet
from tests.rollouts.helpers import commit

BINDING = f"{API}/alias-bindings/vision/det/production"
ALIAS = f"{API}/models/vision/det/aliases/production"


def _bind(fleet: Fleet, **body: Any) -> None:
    r = fleet.client.put(
        BINDING, json={"selector": "", "waves": [10, 100], **body}, headers=fleet.admin
    )
    assert r.status_code == 200, r.text


def _move_alias(fleet: Fleet, version: int, expect: int = 200) -> Any:
    r = fleet.client.put(ALIAS, json={"version": version}, headers=fleet.admin)
    assert r.status_code == expect, r.text
    return r.json()


def _alias_version(fleet: Fleet) -> int | None:
    model = fleet.client.get(f"{API}/models/vision/det", headers=fleet.admin).json()
    return model["aliases"].get("production")


def test_moving_a_bound_alias_plans_a_paused_rollout(fleet: Fleet) -> None:
    fleet.devices(3)
    _bind(fleet, gates={"bake_s": 300})
    version = fleet.version()
    _move_alias(fleet, version)
    (planned,) = fleet.client.get(f"{API}/rollouts", headers=fleet.admin).json()
    assert (planned["state"], planned["wave"], planned["version"]) == ("paused", 0, version)
    assert planned["gates"]["bake_s"] == 300 and planned["waves"] == [10, 100]
    assert fleet.notifier.calls == [], "nothing is announced before an operator starts it"
    started = fleet.act(planned["id"], "resume")
    assert (started["state"], started["wave"]) == ("running", 1)


def test_template_may_start_the_rollout_at_once(fleet: Fleet) -> None:
    fleet.devices(2)
    _bind(fleet, auto_start=True)
    version = fleet.version()
    _move_alias(fleet, version)
    (planned,) = fleet.client.get(f"{API}/rollouts", headers=fleet.admin).json()
    assert planned["state"] == "running"


def test_incompatible_hardware_refuses_the_alias_move(fleet: Fleet) -> None:
    fleet.devices(1, hardware="rpi4", prefix="pi")
    _bind(fleet)
    version = fleet.version(hardware=["jetson-orin"])
    r = _move_alias(fleet, version, expect=409)
    assert r["error"]["details"]["incompatible_devices"] == [
        {
            "device_id": "pi-0000",
            "hardware": "rpi4",
            "reason": "hardware rpi4 is not in the version's list (jetson-orin)",
        }
    ]
    assert _alias_version(fleet) is None, "the refused plan leaves the alias where it was"
    assert fleet.client.get(f"{API}/rollouts", headers=fleet.admin).json() == []


def test_signature_change_refuses_the_alias_move(fleet: Fleet) -> None:
    agents = fleet.devices(2)
    v1 = fleet.version()
    base = fleet.rollout(version=str(v1), waves=[100])
    commit(fleet, agents, v1, base["id"])
    fleet.tick()
    _bind(fleet)
    v2 = fleet.version(inputs=[{"name": "x", "dtype": "float32", "shape": [1, 4]}])
    r = _move_alias(fleet, v2, expect=409)
    (diff,) = r["error"]["details"]["signature_differences"]
    assert (diff["installed_version"], diff["part"]) == (v1, "inputs")
    assert diff["new"][0]["shape"] == [1, 4]
    v3 = fleet.version()  # same signature as v1: fine
    _move_alias(fleet, v3)
    assert _alias_version(fleet) == v3


def test_unbound_alias_moves_plan_nothing(fleet: Fleet) -> None:
    fleet.devices(1)
    _move_alias(fleet, fleet.version())
    assert fleet.client.get(f"{API}/rollouts", headers=fleet.admin).json() == []


def test_binding_endpoints(fleet: Fleet) -> None:
    _bind(fleet, selector="region=eu")
    listed = fleet.client.get(f"{API}/alias-bindings", headers=fleet.admin).json()
    assert [(b["alias"], b["selector"]) for b in listed] == [("production", "region=eu")]
    for body in ({"selector": "x"}, {"waves": [5, 1]}, {"gates": {"bake_s": -1}}, {"x": 1}):
        r = fleet.client.put(BINDING, json=body, headers=fleet.admin)
        assert r.status_code == 422, (body, r.text)
    assert (
        fleet.client.put(
            f"{API}/alias-bindings/vision/nope/production", json={}, headers=fleet.admin
        ).status_code
        == 404
    )
    assert fleet.client.put(BINDING, json={}, headers=fleet.token("publisher")).status_code == 403
    assert fleet.client.delete(BINDING, headers=fleet.admin).status_code == 204
    assert fleet.client.delete(BINDING, headers=fleet.admin).status_code == 404
