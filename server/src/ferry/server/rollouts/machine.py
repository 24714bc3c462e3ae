"""The rollout state machine: states, legal moves, and the per-device states.

    scheduled ──▶ running(wave k) ──▶ completed ──▶ rolled_back
        │          │  ▲   │  │
        │          ▼  │   │  └──▶ halted ──▶ running | rolled_back | cancelled
        └──▶ paused ◀─┘   └──▶ cancelled | rolled_back
                 └──▶ cancelled | rolled_back

Every change goes through `transition`, which refuses an illegal move with a 409.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ferry.protocol.documents import AgentState
from ferry.server.core.errors import ConflictError
from ferry.server.core.numbers import ascii_int


class RolloutState(StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"


class DeviceState(StrEnum):
    """A device's progress in one rollout, as counted by the gates."""

    PENDING = "pending"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    TIMED_OUT = "timed_out"


S = RolloutState
TRANSITIONS: dict[RolloutState, frozenset[RolloutState]] = {
    S.SCHEDULED: frozenset({S.RUNNING, S.PAUSED, S.CANCELLED}),
    S.RUNNING: frozenset({S.RUNNING, S.PAUSED, S.HALTED, S.COMPLETED, S.CANCELLED, S.ROLLED_BACK}),
    S.PAUSED: frozenset({S.RUNNING, S.CANCELLED, S.ROLLED_BACK}),
    S.HALTED: frozenset({S.RUNNING, S.CANCELLED, S.ROLLED_BACK}),
    S.COMPLETED: frozenset({S.ROLLED_BACK}),
    S.CANCELLED: frozenset(),
    S.ROLLED_BACK: frozenset(),
}
# A rollout in one of these blocks another on the same model and overlapping devices.
ACTIVE = frozenset({S.SCHEDULED, S.RUNNING, S.PAUSED, S.HALTED})
IN_PROGRESS = (DeviceState.DOWNLOADING, DeviceState.INSTALLING)
FAILURES = (DeviceState.FAILED, DeviceState.ROLLED_BACK, DeviceState.TIMED_OUT)
TOOK_VERSION = (DeviceState.DOWNLOADING, DeviceState.INSTALLING, DeviceState.COMMITTED)

AGENT_TO_DEVICE: dict[AgentState, DeviceState] = {
    AgentState.DOWNLOADING: DeviceState.DOWNLOADING,
    AgentState.VERIFYING: DeviceState.DOWNLOADING,
    AgentState.STAGED: DeviceState.INSTALLING,
    AgentState.SWITCHING: DeviceState.INSTALLING,
    AgentState.PROBING: DeviceState.INSTALLING,
    AgentState.COMMITTED: DeviceState.COMMITTED,
    AgentState.ROLLED_BACK: DeviceState.ROLLED_BACK,
    AgentState.FAILED: DeviceState.FAILED,
}


def opened_waves(state: str, wave: int, waves: int) -> range | None:
    """The waves whose members a rollout in ``state`` at ``wave`` (of ``waves``) targets
    whatever their progress; None when its targets depend on progress (halted, cancelled,
    rolled back) or it targets nobody yet (scheduled). `ferry.server.checkin.desired` claims
    by it, and a wave change is narrowed by it (`WaveScope`): one rule for both."""
    if state in (S.RUNNING, S.PAUSED):
        return range(wave + 1)
    if state == S.COMPLETED:
        return range(waves)
    return None


@dataclass(frozen=True)
class WaveScope:
    """The devices whose desired state opening waves ``[first, stop)`` of a rollout changed:
    its members in those waves (the scope of a narrowed epoch bump, `ferry.server.core.epoch`).

    Encoded ``wave:<rollout pk>:<first>:<stop>``; an empty range (a pause, a completion)
    changes nobody's document.
    """

    rollout_pk: int
    first: int
    stop: int

    def encode(self) -> str:
        return f"wave:{self.rollout_pk}:{self.first}:{self.stop}"

    @classmethod
    def decode(cls, text: str) -> WaveScope | None:
        """The scope ``text`` encodes, or None (an unknown scope: void everything)."""
        kind, _, rest = text.partition(":")
        numbers = [ascii_int(part) for part in rest.split(":")]
        if kind != "wave" or len(numbers) != 3:
            return None
        pk, first, stop = numbers
        if pk is None or first is None or stop is None:
            return None
        return cls(pk, first, stop)

    def covers(self, memberships: frozenset[tuple[int, int]]) -> bool:
        """Whether a device with these (rollout pk, wave) memberships joined."""
        return any(pk == self.rollout_pk and self.first <= w < self.stop for pk, w in memberships)

    @classmethod
    def between(cls, pk: int, before: range | None, after: range | None) -> WaveScope | None:
        """The scope of going from opened waves ``before`` to ``after``; None unless waves only
        opened (closing one, or leaving the rule of `opened_waves`, may change anyone's)."""
        if before is None or after is None or after.start != before.start:
            return None
        return cls(pk, before.stop, after.stop) if after.stop >= before.stop else None


class IllegalTransitionError(ConflictError):
    """The rollout's current state does not allow the requested move (409 conflict)."""


def check_transition(current: str, target: RolloutState) -> None:
    if target not in TRANSITIONS[RolloutState(current)]:
        legal = sorted(s.value for s in TRANSITIONS[RolloutState(current)])
        raise IllegalTransitionError(
            f"a {current} rollout cannot become {target.value}", {"state": current, "legal": legal}
        )


def public_wave(index: int) -> int:
    """The wave number people, the API, events and the audit log see: 1 is the first wave.

    Inside the server (the ``wave`` columns, `ferry.protocol.waves.wave_index`) a wave
    is a 0-based index and a rollout that has not run yet is at -1, so it shows as 0:
    the public number counts the waves opened so far.
    """
    return index + 1


def public_id(rollout_pk: int) -> str:
    return f"r-{rollout_pk}"


def parse_id(text: str) -> int | None:
    """``r-12`` (or ``12``) → 12; anything else → None."""
    return ascii_int(text.removeprefix("r-"))
