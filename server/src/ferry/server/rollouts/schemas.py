"""Request bodies of the rollout API; responses are the dicts of `ferry.server.rollouts.status`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints, create_model

from ferry.protocol.gates import LIMITS, OPTIONAL, GatePolicy
from ferry.server.core.schemas import NAME_PATTERN, Strict, Timestamp

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Selector = Annotated[str, StringConstraints(max_length=1024)]
DEFAULT_WAVES = (1, 10, 50, 100)


def _gate_field(name: str) -> Any:
    """The API field of one `GatePolicy` setting: its default and limits, documented."""
    low, high = LIMITS[name]
    kind: Any = Annotated[int, Field(ge=low, le=high)]
    if name in OPTIONAL:
        kind = kind | None
    return (kind, Field(default=getattr(GatePolicy(), name)))


_GatesBase = create_model(
    "_GatesBase", __base__=Strict, **{name: _gate_field(name) for name in GatePolicy.names()}
)


class Gates(_GatesBase):
    """Checked for every wave: the cohort so far must pass before the next wave opens.

    Generated from `ferry.protocol.gates.GatePolicy`: fields, defaults and limits.
    """


class RolloutCreate(Gates):
    namespace: Name
    model: Name
    version: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    selector: Selector = ""
    waves: Annotated[list[int], Field(min_length=1, max_length=20)] = Field(
        default_factory=lambda: list(DEFAULT_WAVES)
    )
    slot: Name = "main"
    auto_rollback: bool = False
    start_at: Timestamp | None = None
    start_paused: bool = False
    skip_incompatible: bool = False
    allow_empty: bool = False


_GatesChangeBase = create_model(  # type: ignore[call-overload]
    "_GatesChangeBase",
    __base__=Strict,
    **{name: (_gate_field(name)[0] | None, Field(default=None)) for name in GatePolicy.names()},
)


class GatesChange(_GatesChangeBase):
    """Gate settings to change on a running rollout; the fields sent change, the others stay
    (``null`` for ``max_failures`` / ``max_failure_pct`` removes that limit)."""


class RollbackBody(Strict):
    """Optional: the version that devices with no previous version go to."""

    baseline: Annotated[int, Field(ge=1)] | None = None


class BindingSet(Strict):
    selector: Selector = ""
    waves: Annotated[list[int], Field(min_length=1, max_length=20)] = Field(
        default_factory=lambda: list(DEFAULT_WAVES)
    )
    slot: Name = "main"
    gates: Gates = Gates()
    auto_rollback: bool = False
    auto_start: bool = False


class BindingPublic(BaseModel):
    namespace: str
    model: str
    alias: str
    selector: str
    template: dict[str, Any]
    created_by: str
    created_at: str
