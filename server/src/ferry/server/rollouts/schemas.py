"""Request bodies of the rollout API; responses are the dicts of `ferry.server.rollouts.status`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from ferry.server.api.schemas import NAME_PATTERN, Strict, Timestamp

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Selector = Annotated[str, StringConstraints(max_length=1024)]
Percent = Annotated[int, Field(ge=0, le=100)]
DEFAULT_WAVES = (1, 10, 50, 100)
Seconds = Annotated[int, Field(ge=0, le=365 * 86400)]


class Gates(Strict):
    """Checked for every wave: the cohort so far must pass before the next wave opens."""

    bake_s: Seconds = 0
    min_success_pct: Percent = 100
    max_failures: Annotated[int, Field(ge=0)] | None = None
    max_failure_pct: Percent | None = 5
    max_retries: Annotated[int, Field(ge=0, le=20)] = 0
    retry_backoff_s: Seconds = 60
    in_progress_timeout_s: Annotated[int, Field(ge=1, le=30 * 86400)] = 1800


class RolloutCreate(Gates):
    namespace: Name
    model: Name
    version: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    selector: Selector = ""
    waves: Annotated[list[int], Field(min_length=1, max_length=20)] = Field(
        default_factory=lambda: list(DEFAULT_WAVES))
    slot: Name = "main"
    auto_rollback: bool = False
    start_at: Timestamp | None = None
    start_paused: bool = False


class BindingSet(Strict):
    selector: Selector = ""
    waves: Annotated[list[int], Field(min_length=1, max_length=20)] = Field(
        default_factory=lambda: list(DEFAULT_WAVES))
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


