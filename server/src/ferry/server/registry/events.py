"""Facts the registry publishes (`ferry.server.core.domain_events`)."""

from __future__ import annotations

from dataclasses import dataclass

from ferry.server.registry.tables import ModelVersion, RegisteredModel


@dataclass(frozen=True)
class AliasMoved:
    """``alias`` of ``model`` now points at ``version`` (a bound alias plans a rollout)."""

    actor: str
    model: RegisteredModel
    alias: str
    version: ModelVersion
