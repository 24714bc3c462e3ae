"""`POST /rollouts/plan` and what creating refuses: matching devices, wave members that the
rollout then really has, skipped and incompatible devices, downloads, empty selectors and
set selectors (`hw in (x86_64,aarch64)`)."""

from __future__ import annotations

from typing import Any

from ferry.protocol.waves import rollout_seed
from tests.fleet.harness import API, Fleet
from tests.rollouts.helpers import commit, target


def plan(fleet: Fleet, **body: Any) -> dict[str, Any]:
    payload = {"namespace": "vision", "model": "det", "version": "1", "waves": [50, 100], **body}
    r = fleet.client.post(f"{API}/rollouts/plan", json=payload, headers=fleet.admin)
    assert r.status_code == 200, r.text
    return dict(r.json())


def members(fleet: Fleet, rollout_id: str, wave: int) -> list[str]:
    r = fleet.client.get(
        f"{API}/rollouts/{rollout_id}/devices",
        params={"wave": wave, "limit": 1000},
        headers=fleet.admin,
    )
    return [d["device_id"] for d in r.json()["devices"]]


class FakeDeltaSizes:
    """The delta sizes the server knows, as the delta service would answer."""

    def __init__(self, sizes: dict[tuple[str, str], int]) -> None:
        self.sizes = sizes
        self.asked: list[tuple[str, str]] = []

    def delta_size(self, from_sha256: str, to_sha256: str) -> int | None:
        self.asked.append((from_sha256, to_sha256))
        return self.sizes.get((from_sha256, to_sha256))


def file_of(fleet: Fleet, version: int) -> dict[str, Any]:
    r = fleet.client.get(f"{API}/models/vision/det/versions/{version}", headers=fleet.admin)
    return dict(r.json()["files"][0])


def test_the_plan_names_the_devices_each_wave_of_the_rollout_then_holds(fleet: Fleet) -> None:
    fleet.devices(30)
    version = fleet.version()
    planned = plan(fleet, version=str(version), waves=[10, 50, 100])
    assert (planned["matching"], planned["targeted"], planned["refusals"]) == (30, 30, [])
    assert [w["wave"] for w in planned["wave_members"]] == [1, 2, 3]
    assert fleet.client.get(f"{API}/rollouts", headers=fleet.admin).json() == [], (
        "a plan creates nothing"
    )
    rollout = fleet.rollout(version=str(version), waves=[10, 50, 100])
    assert rollout["wave_seed"] == planned["wave_seed"]
    for wave in planned["wave_members"]:
        assert sorted(d["device_id"] for d in wave["devices"]) == sorted(
            members(fleet, rollout["id"], wave["wave"])
        ), f"wave {wave['wave']}"
        assert wave["count"] == len(wave["devices"])


def test_the_wave_seed_is_the_shared_function_of_the_request(fleet: Fleet) -> None:
    fleet.devices(2, tags={"region": "eu"})
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[5, 100], selector="region=eu,hw=x86_64")
    manifest = fleet.manifest_sha("vision", "det", version)
    assert rollout["wave_seed"] == rollout_seed(
        "vision/det", manifest, "main", "hw=x86_64,region=eu", [5, 100]
    )


def test_a_selector_that_matches_no_device_is_refused_unless_asked(fleet: Fleet) -> None:
    fleet.devices(3)
    version = fleet.version()
    planned = plan(fleet, version=str(version), selector="region=mars")
    [refusal] = planned["refusals"]
    assert refusal["message"].startswith(
        "the rollout would target no device: selector region=mars matches none of the 3 live "
        "device(s) of namespace vision"
    )
    refused = fleet.rollout(version=str(version), selector="region=mars", expect=409)
    assert refused["error"]["message"] == refusal["message"]
    assert "--allow-empty" in refused["error"]["message"]
    empty = fleet.rollout(version=str(version), selector="region=mars", allow_empty=True)
    assert fleet.status(empty["id"])["devices"] == 0


def test_a_set_selector_rolls_out_to_two_hardware_classes_at_once(fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    x86 = [fleet.enroll(token, f"x86-{i}", hardware="x86_64") for i in range(2)]
    arm = [fleet.enroll(token, f"arm-{i}", hardware="aarch64") for i in range(2)]
    pi = fleet.enroll(token, "pi-0", hardware="rpi4")
    version = fleet.version(hardware=["x86_64", "aarch64"])
    selector = "hw in (x86_64, aarch64)"
    planned = plan(fleet, version=str(version), selector=selector, waves=[100])
    assert planned["selector"] == "hw in (aarch64,x86_64)"
    assert (planned["matching"], planned["refusals"], planned["incompatible"]) == (4, [], [])
    rollout = fleet.rollout(version=str(version), selector=selector, waves=[100])
    assert fleet.notifier.calls[-1] == (["hw:aarch64", "hw:x86_64"], rollout["id"])
    assert all(target(fleet, a) == (version, False) for a in x86 + arm)
    assert target(fleet, pi) is None
    clash = fleet.rollout(version=str(version), selector="hw=aarch64", expect=409)
    assert clash["error"]["details"]["rollouts"] == [rollout["id"]]
    fleet.rollout(version=str(version), selector="hw=rpi4", expect=409)  # rpi4: incompatible
    listed = fleet.client.get(
        f"{API}/devices", params={"selector": "hw in (rpi4,aarch64)"}, headers=fleet.admin
    ).json()
    assert sorted(d["id"] for d in listed) == ["arm-0", "arm-1", "pi-0"]


def test_skip_incompatible_targets_the_rest_and_lists_the_skipped_and_why(fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    fleet.enroll(token, "orin-0", hardware="jetson-orin")
    fleet.enroll(token, "x86-0", hardware="x86_64")
    pi = fleet.enroll(token, "pi-0", hardware="rpi4")
    version = fleet.version(hardware=["x86_64", "jetson-orin"])
    strict = plan(fleet, version=str(version), waves=[100])
    assert strict["incompatible"] == [
        {
            "device_id": "pi-0",
            "hardware": "rpi4",
            "reason": "hardware rpi4 is not in the version's list (x86_64, jetson-orin)",
        }
    ]
    assert "--skip-incompatible" in strict["refusals"][0]["message"]
    assert "pi-0 (rpi4)" in strict["refusals"][0]["message"]
    skipping = plan(fleet, version=str(version), waves=[100], skip_incompatible=True)
    assert (skipping["refusals"], skipping["targeted"], skipping["incompatible"]) == ([], 2, [])
    assert skipping["skipped"] == strict["incompatible"]
    rollout = fleet.rollout(version=str(version), waves=[100], skip_incompatible=True)
    assert fleet.status(rollout["id"])["devices"] == 2
    assert target(fleet, pi) is None, "a skipped device is never told to install it"


def test_the_plan_counts_deltas_the_server_has_and_full_bundles_otherwise(fleet: Fleet) -> None:
    agents = fleet.devices(6)
    v1 = fleet.version()
    base = fleet.rollout(version=str(v1), waves=[100])
    commit(fleet, agents[:4], v1, base["id"])
    fleet.act(base["id"], "cancel")
    v2 = fleet.version()
    commit(fleet, agents[4:5], v2, base["id"])  # ran v2 already (e.g. by hand)
    old, new = file_of(fleet, v1), file_of(fleet, v2)
    sizes = FakeDeltaSizes({(old["sha256"], new["sha256"]): 7})
    fleet.runtime.delta_sizes = sizes
    planned = plan(fleet, version=str(v2), waves=[100])
    by_device = {d["device_id"]: d for w in planned["wave_members"] for d in w["devices"]}
    assert [
        (by_device[a.device_id]["download"], by_device[a.device_id]["bytes"]) for a in agents[:4]
    ] == [("delta", 7)] * 4
    assert by_device[agents[5].device_id]["installed_version"] is None
    assert (
        by_device[agents[5].device_id]["download"],
        by_device[agents[5].device_id]["bytes"],
    ) == ("full", new["size"])
    assert (
        by_device[agents[4].device_id]["download"],
        by_device[agents[4].device_id]["bytes"],
    ) == ("none", 0)
    assert planned["downloads"] == {"full": 1, "delta": 4, "none": 1}
    assert planned["total_bytes"] == 4 * 7 + new["size"]
    assert len(sizes.asked) == 1, "one lookup per installed version and file, not per device"
