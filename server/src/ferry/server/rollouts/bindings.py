"""Registry → fleet: an alias bound to a selector and a rollout template.

Moving a bound alias (``PUT /models/{ns}/{name}/aliases/{alias}``) plans a rollout
of the new version in the same transaction: created paused for an operator to
start, or running at once when the template says ``auto_start``. The plan checks
hardware compatibility and the input/output signature against what the targeted
devices run; a refusal refuses the alias move too, with the reasons listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from ferry.protocol.gates import GatePolicy
from ferry.protocol.timefmt import utcnow
from ferry.server.audit import service as audit
from ferry.server.core.errors import NotFoundError
from ferry.server.fleet.selectors import Selector, format_selector
from ferry.server.registry.events import AliasMoved
from ferry.server.registry.tables import ModelVersion, RegisteredModel
from ferry.server.rollouts.planning import create_rollout
from ferry.server.rollouts.service import RolloutSpec, check_waves, model_ref, resolve_model
from ferry.server.rollouts.tables import AliasBinding, Rollout

TEMPLATE_FIELDS = ("waves", "slot", *GatePolicy.names(), "auto_rollback")


def set_binding(
    session: Session,
    actor: str,
    *,
    namespace: str,
    model: str,
    alias: str,
    selector: Selector,
    template: dict[str, Any],
) -> AliasBinding:
    check_waves(list(template.get("waves", [])))
    row_model = resolve_model(session, namespace, model)
    assert row_model.id is not None
    row = session.get(AliasBinding, (row_model.id, alias)) or AliasBinding(
        model_id=row_model.id, alias=alias, namespace=namespace, model=model, created_by=actor
    )
    row.selector, row.template = selector, template
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="alias_binding.set",
        target=f"{namespace}/{model}:{alias}",
        details={"selector": format_selector(selector), "template": template},
    )
    return row


def list_bindings(session: Session, namespace: str | None) -> Sequence[AliasBinding]:
    stmt = select(AliasBinding).order_by(
        col(AliasBinding.namespace), col(AliasBinding.model), col(AliasBinding.alias)
    )
    if namespace:
        stmt = stmt.where(AliasBinding.namespace == namespace)
    return session.exec(stmt).all()


def delete_binding(session: Session, actor: str, *, namespace: str, model: str, alias: str) -> None:
    row_model = resolve_model(session, namespace, model)
    row = session.get(AliasBinding, (row_model.id, alias))
    if row is None:
        raise NotFoundError(f"alias '{alias}' of {namespace}/{model} is not bound")
    session.delete(row)
    session.flush()
    audit.append(
        session, actor=actor, action="alias_binding.delete", target=f"{namespace}/{model}:{alias}"
    )


def on_alias_moved(session: Session, event: AliasMoved) -> None:
    """Subscribed to the registry's `AliasMoved`: a bound alias plans a rollout."""
    on_alias_set(session, event.actor, event.model, event.alias, event.version)


def on_alias_set(
    session: Session,
    actor: str,
    model: RegisteredModel,
    alias: str,
    version: ModelVersion,
    now: datetime | None = None,
) -> Rollout | None:
    """Plan a rollout when ``alias`` is bound (see `bind`); None when it is not."""
    binding = session.get(AliasBinding, (model.id, alias))
    if binding is None:
        return None
    namespace = model_ref(session, model).split("/", 1)[0]
    stored = binding.template
    gates = GatePolicy.from_dict({k: v for k, v in stored.items() if k in GatePolicy.names()})
    extra = {k: stored[k] for k in ("waves", "slot", "auto_rollback") if k in stored}
    spec = RolloutSpec(
        namespace=namespace,
        model=model.name,
        version=str(version.version),
        selector=dict(binding.selector),
        gates=gates,
        start_paused=not stored.get("auto_start", False),
        **extra,
    )
    return create_rollout(session, actor, spec, now or utcnow(), check_signature=True)
