"""Two rollouts of two models on the same devices: each slot answers to its own rollout,
both rollouts complete, and no membership state lasts for ever."""

from __future__ import annotations

from tests.fleet.harness import Fleet
from tests.rollouts.helpers import commit


def test_each_slot_names_its_rollout_and_both_rollouts_complete(fleet: Fleet) -> None:
    fleet.model("vision", "seg")
    agents = fleet.devices(4)
    det, seg = fleet.version("vision", "det"), fleet.version("vision", "seg")
    a = fleet.rollout(model="det", version=str(det), waves=[100])
    b = fleet.rollout(model="seg", version=str(seg), waves=[100], slot="aux")
    fleet.tick()
    signed = fleet.desired(agents[0])["signed"]
    assert signed["slots"]["main"]["rollout_id"] == a["id"]
    assert signed["slots"]["aux"]["rollout_id"] == b["id"]
    # Each device reports with the rollout of the slot, as the agent now does.
    commit(fleet, agents, det, a["id"])
    for agent in agents:
        fleet.report(agent, "committed", to_version=seg, rollout_id=b["id"], slot="aux")
    fleet.tick()
    assert fleet.show(a["id"])["state"] == "completed"
    assert fleet.show(b["id"])["state"] == "completed"


def test_a_device_that_never_starts_times_out_instead_of_holding_the_gate(fleet: Fleet) -> None:
    """Pending ends too; and a gate that can no longer pass halts rather than waits."""
    agents = fleet.devices(3)
    version = fleet.version()
    rollout = fleet.rollout(
        version=str(version),
        waves=[100],
        in_progress_timeout_s=600,
        max_failure_pct=50,
        min_success_pct=100,
    )
    fleet.tick()
    commit(fleet, agents[1:], version, rollout["id"])  # agents[0] is offline: never reports
    fleet.clock.advance(599)
    fleet.tick()
    counts = fleet.status(rollout["id"])["totals"]
    assert counts["pending"] == 1 and fleet.show(rollout["id"])["state"] == "running"
    fleet.clock.advance(2)
    fleet.tick()
    status = fleet.status(rollout["id"])
    assert status["totals"]["pending"] == 0 and status["totals"]["timed_out"] == 1
    shown = fleet.show(rollout["id"])
    assert shown["state"] == "halted" and "can no longer pass" in shown["reason"]
