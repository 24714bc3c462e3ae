"""The gate policy of a rollout: one value object for its fields, defaults, limits and rules.

The API, the SDK, the CLI, the rollout table and the gate engine all read this
class, so a default or a limit is written once (the API's request schema is
generated from it, see `ferry.server.rollouts.schemas`). A gate is checked for
every wave on the cohort so far: it passes once the wave has baked and enough
devices committed; the failure limit halts the rollout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ferry.protocol.errors import MalformedError

_DAY_S = 86400
# name -> (lowest, highest) accepted; None as a value means "no such limit".
LIMITS: dict[str, tuple[int, int]] = {
    "bake_s": (0, 365 * _DAY_S),
    "min_success_pct": (0, 100),
    "max_failures": (0, 2**31 - 1),
    "max_failure_pct": (0, 100),
    "max_retries": (0, 20),
    "retry_backoff_s": (0, 365 * _DAY_S),
    "in_progress_timeout_s": (1, 30 * _DAY_S),
    "max_failed_pct": (0, 100),
    "max_rolled_back_pct": (0, 100),
    "max_timed_out_pct": (0, 100),
}
# Abort criteria per failure type (as AWS IoT Jobs' abortConfig): the device state each
# counts, and its field. A failure counts once it is final (no retry left).
FAILURE_TYPES = {
    "failed": "max_failed_pct",
    "rolled_back": "max_rolled_back_pct",
    "timed_out": "max_timed_out_pct",
}
OPTIONAL = frozenset({"max_failures", "max_failure_pct", *FAILURE_TYPES.values()})


@dataclass(frozen=True)
class GatePolicy:
    """When a wave may advance and when the rollout halts; invalid values never construct."""

    bake_s: int = 0
    """Seconds a wave runs before its gate may pass."""
    min_success_pct: int = 100
    """Committed devices, in % of the cohort so far, for the gate to pass."""
    max_failures: int | None = None
    """Halt when more devices than this failed for good (None: no count limit)."""
    max_failure_pct: int | None = 5
    """Halt when more than this % of the cohort failed for good (None: no % limit)."""
    max_retries: int = 0
    """How often a failed device is offered the update again before its failure is final."""
    retry_backoff_s: int = 60
    """Seconds between a failure and the retry offer."""
    in_progress_timeout_s: int = 1800
    """A device silent this long mid-update counts as timed out (a failure)."""
    max_failed_pct: int | None = None
    """Halt when more than this % of the cohort failed (refused or broken install)."""
    max_rolled_back_pct: int | None = None
    """Halt when more than this % of the cohort rolled back (health probe failed)."""
    max_timed_out_pct: int | None = None
    """Halt when more than this % of the cohort timed out (silent, or never started)."""

    def __post_init__(self) -> None:
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise MalformedError(f"gate {name} must be a whole number, not {value!r}")
            if not low <= value <= high:
                raise MalformedError(f"gate {name} must be between {low} and {high}, not {value}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GatePolicy:
        """From a JSON object; unknown keys are refused, missing ones take the defaults."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise MalformedError(f"unknown gate settings: {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def failure_limit_crossed(self, failures: int, cohort: int) -> bool:
        """More final failures than the count or the percentage allows."""
        if self.max_failures is not None and failures > self.max_failures:
            return True
        return self.max_failure_pct is not None and failures * 100 > self.max_failure_pct * cohort

    def abort_reason(self, final_by_type: Mapping[str, int], cohort: int) -> str | None:
        """The first failure type past its own limit, in words; None when none is."""
        for kind, name in FAILURE_TYPES.items():
            limit, count = getattr(self, name), final_by_type.get(kind, 0)
            if limit is not None and count * 100 > limit * cohort:
                share = round(100 * count / cohort) if cohort else 0
                return (
                    f"{count} of {cohort} devices {kind.replace('_', ' ')} ({share} % > {limit} %)"
                )
        return None

    def unreachable(self, committed: int, failures: int, cohort: int) -> bool:
        """Even if every device still under way commits, the success rate stays too low."""
        return (committed + (cohort - committed - failures)) * 100 < self.min_success_pct * cohort

    def passes(self, committed: int, cohort: int, bake_left_s: int) -> bool:
        """The wave has baked and enough of the cohort committed."""
        return bake_left_s == 0 and committed * 100 >= self.min_success_pct * cohort
