"""Rollout policy: Production only (Staging on canaries), no overlapping active rollouts,
compatible hardware, and clear 4xx answers for bad input."""

from __future__ import annotations

from tests.fleet.harness import API, Fleet


def test_only_production_versions_roll_out(fleet: Fleet) -> None:
    fleet.devices(2)
    unstaged = fleet.version(stage=None)
    r = fleet.rollout(version=str(unstaged), expect=409)
    assert "Production" in r["error"]["message"]
    staging = fleet.version(stage="Staging")
    r = fleet.rollout(version=str(staging), selector="region=eu", expect=409)
    assert "channel=canary" in r["error"]["message"]


def test_staging_version_may_go_to_canary_devices(fleet: Fleet) -> None:
    fleet.devices(2, tags={"channel": "canary"})
    staging = fleet.version(stage="Staging")
    rollout = fleet.rollout(version=str(staging), selector="channel=canary")
    assert rollout["state"] == "running" and rollout["selector"] == "channel=canary"


def test_overlapping_active_rollouts_of_one_model_are_409(fleet: Fleet) -> None:
    fleet.devices(2, tags={"region": "eu"})
    v1, v2 = fleet.version(), fleet.version()
    first = fleet.rollout(version=str(v1), selector="region=eu")
    r = fleet.rollout(version=str(v2), selector="hw=x86_64", expect=409)
    assert r["error"]["code"] == "conflict" and r["error"]["details"]["rollouts"] == [first["id"]]
    fleet.rollout(version=str(v2), selector="region=us", allow_empty=True)  # disjoint: allowed
    fleet.act(first["id"], "cancel")
    fleet.rollout(version=str(v2), selector="region=eu,hw=x86_64")


def test_incompatible_hardware_is_refused_with_the_devices_listed(fleet: Fleet) -> None:
    fleet.devices(2, hardware="jetson-orin", prefix="orin")
    fleet.devices(1, hardware="rpi4", prefix="pi")
    version = fleet.version(hardware=["jetson-orin"])
    r = fleet.rollout(version=str(version), expect=409)
    details = r["error"]["details"]
    assert details["incompatible_devices"] == [
        {
            "device_id": "pi-0000",
            "hardware": "rpi4",
            "reason": "hardware rpi4 is not in the version's list (jetson-orin)",
        }
    ]
    fleet.rollout(version=str(version), selector="hw=jetson-orin")


def test_version_may_be_named_by_alias(fleet: Fleet) -> None:
    fleet.devices(1)
    version = fleet.version()
    fleet.client.put(
        f"{API}/models/vision/det/aliases/champion", json={"version": version}, headers=fleet.admin
    )
    assert fleet.rollout(version="champion")["version"] == version


def test_bad_rollout_requests(fleet: Fleet) -> None:
    fleet.devices(1)
    version = str(fleet.version())
    cases = [
        ({"waves": [50, 10]}, 422),
        ({"waves": [0, 100]}, 422),
        ({"waves": []}, 422),
        ({"waves": [10, 101]}, 422),
        ({"selector": "region"}, 422),
        ({"selector": "Region=eu"}, 422),
        ({"min_success_pct": 101}, 422),
        ({"start_at": "soon"}, 422),
        ({"slot": "Main Slot"}, 422),
        ({"bake_s": -1}, 422),
        ({"model": "nope"}, 404),
        ({"version": "99"}, 404),
        ({"version": "no-alias"}, 404),
        ({"namespace": "nope"}, 404),
        ({"surprise": True}, 422),
    ]
    for body, status in cases:
        r = fleet.client.post(
            f"{API}/rollouts",
            json={"namespace": "vision", "model": "det", "version": version, **body},
            headers=fleet.admin,
        )
        assert r.status_code == status, (body, r.text)
        assert set(r.json()) == {"error"}


def test_rollout_endpoints_check_roles(fleet: Fleet) -> None:
    fleet.devices(1)
    version = str(fleet.version())
    body = {"namespace": "vision", "model": "det", "version": version}
    for role in ("viewer", "publisher", "approver"):
        assert (
            fleet.client.post(f"{API}/rollouts", json=body, headers=fleet.token(role)).status_code
            == 403
        )
    fleet.namespace("audio")
    outsider = fleet.token("operator", ["audio"])
    assert fleet.client.post(f"{API}/rollouts", json=body, headers=outsider).status_code == 403
    rollout = fleet.rollout(version=version)
    assert fleet.client.get(f"{API}/rollouts", headers=outsider).json() == []
    assert [
        r["id"]
        for r in fleet.client.get(
            f"{API}/rollouts", headers=fleet.token("viewer", ["vision"])
        ).json()
    ] == [rollout["id"]]
    assert (
        fleet.client.post(f"{API}/rollouts/{rollout['id']}/pause", headers=outsider).status_code
        == 404
    )
    assert (
        fleet.client.post(
            f"{API}/rollouts/{rollout['id']}/pause", headers=fleet.token("viewer")
        ).status_code
        == 403
    )
    assert (
        fleet.client.get(
            f"{API}/rollouts/{rollout['id']}", headers=fleet.token("viewer")
        ).status_code
        == 200
    )
    for bad in ("r-999", "x", "r-", "r-1e3"):
        assert fleet.client.get(f"{API}/rollouts/{bad}", headers=fleet.admin).status_code == 404
        assert (
            fleet.client.get(f"{API}/rollouts/{bad}/status", headers=fleet.admin).status_code == 404
        )
        assert (
            fleet.client.post(f"{API}/rollouts/{bad}/pause", headers=fleet.admin).status_code == 404
        )
    assert (
        fleet.client.get(
            f"{API}/rollouts", params={"state": "weird"}, headers=fleet.admin
        ).status_code
        == 422
    )
