"""Small helpers shared by the rollout tests."""

from __future__ import annotations

from typing import Any

from ferry.protocol.waves import wave_index
from tests.fleet.harness import Agent, Fleet


def by_wave(rollout: dict[str, Any], agents: list[Agent]) -> dict[int, list[Agent]]:
    waves: dict[int, list[Agent]] = {}
    for agent in agents:
        waves.setdefault(
            wave_index(rollout["wave_seed"], agent.device_id, rollout["waves"]), []
        ).append(agent)
    return waves


def target(fleet: Fleet, agent: Agent, slot: str = "main") -> tuple[int, bool] | None:
    """(version, allow_downgrade) the device is told to run, or None."""
    slots = fleet.desired(agent)["signed"]["slots"]
    if slot not in slots:
        return None
    return slots[slot]["version"], slots[slot]["allow_downgrade"]


def commit(
    fleet: Fleet,
    agents: list[Agent],
    version: int,
    rollout_id: str,
    from_version: int | None = None,
) -> None:
    for agent in agents:
        fleet.report(
            agent,
            "downloading",
            to_version=version,
            from_version=from_version,
            rollout_id=rollout_id,
        )
        fleet.report(
            agent, "committed", to_version=version, from_version=from_version, rollout_id=rollout_id
        )


def fail(
    fleet: Fleet, agents: list[Agent], version: int, rollout_id: str, state: str = "failed"
) -> None:
    for agent in agents:
        fleet.report(
            agent, state, to_version=version, rollout_id=rollout_id, error_code="probe_failed"
        )
