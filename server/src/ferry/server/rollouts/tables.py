"""Rollouts, their per-device state, and alias bindings (registry → fleet)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Index, inspect
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key
from sqlmodel import Field, SQLModel

from ferry.protocol.gates import GatePolicy
from ferry.protocol.waves import rollout_seed
from ferry.server.core import epoch
from ferry.server.core.columns import json_field, utc_now
from ferry.server.fleet.selectors import Selector, format_selector
from ferry.server.rollouts.machine import RolloutState, WaveScope, opened_waves

_GATES = GatePolicy()


class Rollout(SQLModel, table=True):
    """A persisted state machine; ``wave`` is -1 until the rollout first runs."""

    __tablename__ = "rollout"

    id: int | None = Field(default=None, primary_key=True)
    namespace: str = Field(index=True)
    model: str = Field(index=True)  # "ns/name"
    model_id: int = Field(foreign_key="registered_model.id")
    slot: str = "main"
    version: int
    manifest_sha256: str
    hardware: list[str] = json_field(list)  # the version's; late joiners are checked against it
    selector: Selector = json_field(dict)
    waves: list[int] = json_field(list)
    # The columns of `GatePolicy` (read them through `gates()`); rows are always written from
    # a policy, so the optional limits default to None here: SQLAlchemy would turn an
    # explicit None (no limit) into a non-None column default.
    bake_s: int = _GATES.bake_s
    min_success_pct: int = _GATES.min_success_pct
    max_failures: int | None = None
    max_failure_pct: int | None = None
    max_retries: int = _GATES.max_retries
    retry_backoff_s: int = _GATES.retry_backoff_s
    in_progress_timeout_s: int = _GATES.in_progress_timeout_s
    max_failed_pct: int | None = None
    max_rolled_back_pct: int | None = None
    max_timed_out_pct: int | None = None
    auto_rollback: bool = False
    start_at: str | None = None
    state: str = Field(default="scheduled", index=True)
    wave: int = -1
    wave_started_at: str | None = None
    retry_generation: int = 0
    announced: str = ""
    reason: str = ""
    created_by: str
    created_at: str = Field(default_factory=utc_now)
    updated_at: str = Field(default_factory=utc_now)

    def gates(self) -> GatePolicy:
        """The rollout's gate policy, as stored."""
        return GatePolicy(**{name: getattr(self, name) for name in GatePolicy.names()})

    def wave_seed(self) -> str:
        """What `ferry.protocol.waves.wave_index` hashes with each device id: derived from
        what the rollout asks for, so a plan made before it existed holds the same waves."""
        return rollout_seed(
            self.model,
            self.manifest_sha256,
            self.slot,
            format_selector(self.selector),
            list(self.waves),
        )


class RolloutDevice(SQLModel, table=True):
    """One device's progress in one rollout; aggregated with GROUP BY (rollout, wave, state)."""

    __tablename__ = "rollout_device"
    __table_args__ = (Index("ix_rollout_device_rws", "rollout_id", "wave", "state"),)

    rollout_id: int = Field(foreign_key="rollout.id", primary_key=True)
    device_id: str = Field(foreign_key="device.id", primary_key=True, index=True)
    wave: int
    state: str = "pending"
    attempts: int = 0
    from_version: int | None = None
    from_manifest: str | None = None
    error_code: str | None = None
    updated_at: str = Field(default_factory=utc_now)
    last_report_at: str = ""
    last_report_seq: int | None = None  # the device's report_seq applied last
    retry_at: str | None = None


class AliasBinding(SQLModel, table=True):
    """Moving ``alias`` of a model plans a rollout at ``selector`` using ``template``."""

    __tablename__ = "alias_binding"

    model_id: int = Field(foreign_key="registered_model.id", primary_key=True)
    alias: str = Field(primary_key=True)
    namespace: str = Field(index=True)
    model: str
    selector: Selector = json_field(dict)
    template: dict[str, Any] = json_field(dict)
    created_by: str
    created_at: str = Field(default_factory=utc_now)


# What the desired states of a rollout's devices depend on (`ferry.server.core.epoch`).
_ROLLOUT_WATCHED = [
    "namespace",
    "model",
    "slot",
    "version",
    "manifest_sha256",
    "hardware",
    "selector",
    "waves",
    "state",
    "wave",
    "retry_generation",
]


def _before(rollout: Rollout, name: str) -> Any:
    """The value column ``name`` had before this flush (None when it was never loaded)."""
    history = inspect(rollout).attrs[name].history
    old = [*history.deleted, *history.unchanged]
    return old[0] if old else None


def _wave_scope(_session: Session, rollout: Rollout) -> str | None:
    """A change of only ``state`` and ``wave`` that only opened waves (the gate advancing,
    a pause, a completion) alters the documents of those waves' members alone."""
    attrs = inspect(rollout).attrs
    changed = {name for name in _ROLLOUT_WATCHED if attrs[name].history.has_changes()}
    old_state, old_wave = _before(rollout, "state"), _before(rollout, "wave")
    if not changed <= {"state", "wave"} or old_state is None or old_wave is None:
        return None
    count = len(rollout.waves)
    scope = WaveScope.between(
        rollout.id or 0,
        opened_waves(old_state, old_wave, count),
        opened_waves(rollout.state, rollout.wave, count),
    )
    return scope.encode() if scope is not None else None


epoch.watch(Rollout, _ROLLOUT_WATCHED, narrow=_wave_scope)
# A member's state decides its claim only in a halted, cancelled or rolled-back rollout
# (`ferry.server.checkin.desired._claim`); the transition into those states is itself a
# watched change, so reports in a running, paused or completed rollout keep the caches.
_STATE_BLIND = frozenset({RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.COMPLETED})


def member_state_counts(rollout_state: str) -> bool:
    """Whether a member's state shapes its desired state in a rollout in ``rollout_state``
    (ingest's set-based writes ask this instead of the session events)."""
    return rollout_state not in _STATE_BLIND


def _member_state_irrelevant(session: Session, member: Any) -> bool:
    """True when ``member``'s rollout is in the session and in a state-blind state."""
    rollout = session.identity_map.get(identity_key(Rollout, member.rollout_id))
    if rollout is None or "state" in inspect(rollout).unloaded:
        return False
    unchanged = bool(inspect(rollout).attrs["state"].history.unchanged)
    return unchanged and not member_state_counts(rollout.state)


epoch.watch(
    RolloutDevice,
    ["wave", "state", "attempts", "from_version", "from_manifest"],
    unless=(["state"], _member_state_irrelevant),
)
