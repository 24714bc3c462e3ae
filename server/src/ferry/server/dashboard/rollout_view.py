"""What the rollout pages show: waves as bars of states, the gate, and the operator actions.

Everything is counted by `ferry.server.rollouts.status` (one GROUP BY per rollout);
this module only shapes it for the templates: bar segments in SVG units, public
(1-based) wave numbers, and for each action the sentence the confirmation shows —
what it does and to how many devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from ferry.server.auth.service import Principal, ServerRole
from ferry.server.rollouts.machine import (
    FAILURES,
    TOOK_VERSION,
    TRANSITIONS,
    DeviceState,
    RolloutState,
    public_wave,
)
from ferry.server.rollouts.status import rollout_status
from ferry.server.rollouts.tables import Rollout

BAR_WIDTH = 600  # SVG user units; the bar scales with the page
ACTION_TARGET: dict[str, RolloutState] = {
    "pause": RolloutState.PAUSED,
    "resume": RolloutState.RUNNING,
    "advance": RolloutState.RUNNING,
    "cancel": RolloutState.CANCELLED,
    "rollback": RolloutState.ROLLED_BACK,
}
ACTION_LABEL = {
    "pause": "Pause",
    "resume": "Resume",
    "advance": "Advance",
    "cancel": "Halt (cancel)",
    "rollback": "Roll back",
}


@dataclass(frozen=True)
class Segment:
    state: str
    x: float
    width: float
    count: int


@dataclass(frozen=True)
class Plan:
    """One operator action as the confirmation names it."""

    action: str
    label: str
    devices: int
    text: str


def segments(counts: dict[str, int], total: int, width: int = BAR_WIDTH) -> list[Segment]:
    """The bar of one wave: one segment per non-empty state, left to right in state order."""
    out, x = [], 0.0
    for state in (s.value for s in DeviceState):
        n = counts.get(state, 0)
        if n and total:
            w = round(width * n / total, 2)
            out.append(Segment(state, round(x, 2), w, n))
            x += w
    return out


def legal_actions(rollout: Rollout) -> list[str]:
    """The actions the rollout's state allows (the API refuses the rest with 409)."""
    state = RolloutState(rollout.state)
    legal = []
    for name, target in ACTION_TARGET.items():
        if name == "advance":
            ok = state in (RolloutState.RUNNING, RolloutState.PAUSED)
        elif name == "resume":
            ok = state in (RolloutState.PAUSED, RolloutState.HALTED, RolloutState.SCHEDULED)
        else:
            ok = target in TRANSITIONS[state]
        if ok:
            legal.append(name)
    return legal


def _sum(waves: list[dict[str, Any]], upto: int, states: tuple[str, ...]) -> int:
    return sum(w["counts"][s] for w in waves[: upto + 1] for s in states)


def plan(rollout: Rollout, status: dict[str, Any], action: str) -> Plan:
    """What ``action`` will do, in one sentence, with the number of devices it touches."""
    waves, wave = status["waves"], max(rollout.wave, 0)
    target = f"{rollout.model} v{rollout.version}"
    pending = _sum(waves, wave, (DeviceState.PENDING.value,))
    failed = _sum(waves, wave, tuple(s.value for s in FAILURES))
    took = _sum(waves, len(waves) - 1, tuple(s.value for s in TOOK_VERSION))
    if action == "pause":
        n, text = (
            pending,
            (
                f"No device starts {target} until resumed: {pending} devices that "
                f"have not started stay on their current version."
            ),
        )
    elif action == "resume":
        n = pending + (failed if rollout.state == RolloutState.HALTED else 0)
        text = (
            f"Wave {wave + 1} continues with a fresh bake: {n} devices will be told to "
            f"install {target}"
            + (
                f" ({failed} failed devices get one more try)."
                if rollout.state == RolloutState.HALTED
                else "."
            )
        )
    elif action == "advance":
        if wave + 1 >= len(waves):
            n, text = 0, f"Mark the rollout of {target} completed (it is in its last wave)."
        else:
            n = waves[wave + 1]["total"]
            text = (
                f"Open wave {wave + 2} ({waves[wave + 1]['percent']}%) now without waiting "
                f"for the gate: {n} more devices will be told to install {target}."
            )
    elif action == "cancel":
        n = pending
        text = (
            f"Stop the rollout for good: {pending} devices that have not started stay on "
            f"their current version; devices that already run {target} keep it."
        )
    else:
        n = took
        text = (
            f"Roll back {target}: {took} devices that took it are told to return to their "
            f"previous version (a signed downgrade). This cannot be undone."
        )
    return Plan(action, ACTION_LABEL[action], n, text)


def can_operate(principal: Principal, rollout: Rollout) -> bool:
    return principal.has_role(ServerRole.OPERATOR) and principal.in_namespace(rollout.namespace)


def rollout_view(
    session: Session, rollout: Rollout, principal: Principal, now: datetime
) -> dict[str, Any]:
    """Everything the rollout page and its live fragment render."""
    status = rollout_status(session, rollout, now)
    for entry in status["waves"]:  # ``wave`` is already the public number (1 = first)
        entry["number"] = entry["wave"]
        entry["segments"] = segments(entry["counts"], entry["total"])
        entry["opened"] = entry["wave"] <= public_wave(rollout.wave)
    actions = (
        [plan(rollout, status, a) for a in legal_actions(rollout)]
        if can_operate(principal, rollout)
        else []
    )
    failed = sum(status["totals"][s.value] for s in FAILURES)
    return {
        "status": status,
        "rollout": status["rollout"],
        "gate": status["gate"],
        "actions": actions,
        "failed": failed,
        "states": [s.value for s in DeviceState],
    }
