"""Wave membership is ferry.protocol.waves.wave_index, and announcing costs one publish."""

from __future__ import annotations

from ferry.protocol.waves import wave_index
from tests.fleet.harness import API, Fleet
from tests.rollouts.helpers import by_wave, commit, target


def test_membership_is_the_shared_deterministic_hash(fleet: Fleet) -> None:
    agents = fleet.devices(40)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[10, 50, 100])
    waves = by_wave(rollout, agents)
    status = fleet.status(rollout["id"])
    assert [w["total"] for w in status["waves"]] == [len(waves.get(k, [])) for k in range(3)]
    first = {a.device_id for a in waves.get(0, [])}
    for agent in agents:
        expected = (version, False) if agent.device_id in first else None
        assert target(fleet, agent) == expected
    assert wave_index(rollout["id"], "dev-0000", [100]) == 0


def test_a_wave_is_announced_with_one_publish_whatever_its_size(fleet: Fleet) -> None:
    agents = fleet.devices(30, tags={"region": "eu"})
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[50, 100], selector="region=eu")
    assert fleet.notifier.calls == [(["region:eu"], rollout["id"])]
    waves = by_wave(rollout, agents)
    commit(fleet, waves[0], version, rollout["id"])
    fleet.tick()
    assert fleet.show(rollout["id"])["wave"] == 1
    assert len(fleet.notifier.calls) == 2
    fleet.tick()  # nothing changed: nothing announced again
    assert len(fleet.notifier.calls) == 2
    assert all(target(fleet, a) == (version, False) for a in agents)


def test_devices_enrolled_later_join_the_rollout(fleet: Fleet) -> None:
    fleet.devices(2)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[100])
    late = fleet.enroll(fleet.enrollment_token(), "late-1")
    assert target(fleet, late) == (version, False)
    assert fleet.status(rollout["id"])["devices"] == 3
    incompatible = fleet.enroll(fleet.enrollment_token(), "late-2", hardware="rpi4")
    assert target(fleet, incompatible) is None
    assert fleet.client.get(f"{API}/rollouts/{rollout['id']}/status",
                            headers=fleet.admin).json()["devices"] == 3
