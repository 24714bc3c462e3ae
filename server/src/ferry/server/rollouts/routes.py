"""Rollouts (create, list, show, pause, resume, advance, cancel, rollback) and alias bindings."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from sqlmodel import Session

from ferry.protocol.gates import GatePolicy
from ferry.server.api.deps import CtxDep, Reader, ReadSessionDep, SessionDep, require
from ferry.server.auth.service import Principal, ServerRole
from ferry.server.fleet.runtime import FleetRuntime, get_runtime
from ferry.server.fleet.selectors import format_selector, parse_selector
from ferry.server.rollouts import bindings, planning, service
from ferry.server.rollouts.engine import announce_changes
from ferry.server.rollouts.machine import RolloutState
from ferry.server.rollouts.members import rollback_summary
from ferry.server.rollouts.schemas import (
    BindingPublic,
    BindingSet,
    GatesChange,
    RollbackBody,
    RolloutCreate,
)
from ferry.server.rollouts.status import rollout_public
from ferry.server.rollouts.tables import AliasBinding, Rollout

router = APIRouter(tags=["rollouts"])
Operator = Annotated[Principal, Depends(require(ServerRole.OPERATOR, namespace_param=None))]
NsOperator = Annotated[Principal, Depends(require(ServerRole.OPERATOR))]
RuntimeDep = Annotated[FleetRuntime, Depends(get_runtime)]
AliasName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
Action = Callable[[Session, str, Rollout, datetime], None]
ACTIONS: dict[str, Action] = {
    "pause": service.pause,
    "resume": service.resume,
    "advance": service.advance,
    "cancel": service.cancel,
    "rollback": service.rollback,
}


def _spec(body: RolloutCreate) -> service.RolloutSpec:
    values = body.model_dump(exclude={"selector"})
    gates = GatePolicy.from_dict({name: values.pop(name) for name in GatePolicy.names()})
    return service.RolloutSpec(**values, gates=gates, selector=parse_selector(body.selector))


@router.post("/rollouts", status_code=201)
def create_rollout(
    body: RolloutCreate, session: SessionDep, ctx: CtxDep, operator: Operator, runtime: RuntimeDep
) -> dict[str, Any]:
    """Create and (unless scheduled or paused) start a rollout; 409 with the reason when the
    plan for the same body has refusals (`POST /rollouts/plan` lists them all)."""
    operator.require((ServerRole.OPERATOR,), body.namespace)
    rollout = planning.create_rollout(session, operator.name, _spec(body), runtime.now())
    session.commit()
    announce_changes(ctx.engine, runtime)
    return rollout_public(rollout)


@router.post("/rollouts/plan")
def plan_rollout(
    body: RolloutCreate, session: ReadSessionDep, operator: Operator, runtime: RuntimeDep
) -> dict[str, Any]:
    """What `POST /rollouts` with this body would do — devices per wave, skipped and
    incompatible devices, downloads, total bytes, refusals — without doing it."""
    operator.require((ServerRole.OPERATOR,), body.namespace)
    plan = planning.make_plan(session, _spec(body))
    return planning.plan_public(session, plan, runtime.delta_sizes)


@router.get("/rollouts")
def list_rollouts(
    session: ReadSessionDep,
    reader: Reader,
    namespace: str | None = None,
    state: RolloutState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    rows = service.list_rollouts(
        session, reader, namespace=namespace, state=state.value if state else None, limit=limit
    )
    return [rollout_public(r) for r in rows]


@router.get("/rollouts/{rollout_id}")
def show_rollout(rollout_id: str, session: ReadSessionDep, reader: Reader) -> dict[str, Any]:
    return rollout_public(service.get_rollout(session, reader, rollout_id))


def _act(name: str) -> Callable[..., dict[str, Any]]:
    action = ACTIONS[name]

    def handler(
        rollout_id: str, session: SessionDep, ctx: CtxDep, operator: Operator, runtime: RuntimeDep
    ) -> dict[str, Any]:
        rollout = service.get_rollout(session, operator, rollout_id, lock=True)
        operator.require((ServerRole.OPERATOR,), rollout.namespace)
        action(session, operator.name, rollout, runtime.now())
        session.commit()
        announce_changes(ctx.engine, runtime)
        return rollout_public(rollout)

    handler.__name__ = f"{name}_rollout"
    handler.__doc__ = f"{name.capitalize()} the rollout (operator); 409 on an illegal transition."
    return handler


@router.post("/rollouts/{rollout_id}/rollback")
def rollback_rollout(
    rollout_id: str,
    session: SessionDep,
    ctx: CtxDep,
    operator: Operator,
    runtime: RuntimeDep,
    body: RollbackBody | None = None,
) -> dict[str, Any]:
    """Send the devices that took the version their previous one — or, for those whose first
    install this was, ``baseline`` when given; the answer says who goes back and who stays."""
    rollout = service.get_rollout(session, operator, rollout_id, lock=True)
    operator.require((ServerRole.OPERATOR,), rollout.namespace)
    service.rollback(
        session, operator.name, rollout, runtime.now(), baseline=body.baseline if body else None
    )
    session.commit()
    announce_changes(ctx.engine, runtime)
    return {**rollout_public(rollout), "rollback": rollback_summary(session, rollout)}


for _name in (n for n in ACTIONS if n != "rollback"):
    router.add_api_route(
        f"/rollouts/{{rollout_id}}/{_name}", _act(_name), methods=["POST"], name=f"{_name}_rollout"
    )


@router.patch("/rollouts/{rollout_id}/gates")
def edit_gates(
    rollout_id: str, body: GatesChange, session: SessionDep, operator: Operator, runtime: RuntimeDep
) -> dict[str, Any]:
    """Change gate settings of a rollout that has not ended (operator); audited with the
    before and after of each changed setting, answered with ``changed``."""
    rollout = service.get_rollout(session, operator, rollout_id, lock=True)
    operator.require((ServerRole.OPERATOR,), rollout.namespace)
    changes = body.model_dump(include=body.model_fields_set)
    changed = service.edit_gates(session, operator.name, rollout, changes, runtime.now())
    session.commit()
    return {**rollout_public(rollout), "changed": changed}


def _binding_public(row: AliasBinding) -> BindingPublic:
    return BindingPublic(
        namespace=row.namespace,
        model=row.model,
        alias=row.alias,
        selector=format_selector(row.selector),
        template=row.template,
        created_by=row.created_by,
        created_at=row.created_at,
    )


@router.put("/alias-bindings/{ns}/{name}/{alias}")
def set_binding(
    ns: str,
    name: str,
    alias: AliasName,
    body: BindingSet,
    session: SessionDep,
    operator: NsOperator,
) -> BindingPublic:
    """Moving this alias from now on plans a rollout with this selector and template."""
    template = {
        "waves": body.waves,
        "slot": body.slot,
        "auto_rollback": body.auto_rollback,
        "auto_start": body.auto_start,
        **body.gates.model_dump(),
    }
    row = bindings.set_binding(
        session,
        operator.name,
        namespace=ns,
        model=name,
        alias=alias,
        selector=parse_selector(body.selector),
        template=template,
    )
    session.commit()
    return _binding_public(row)


@router.get("/alias-bindings")
def list_bindings(
    session: ReadSessionDep, reader: Reader, namespace: str | None = None
) -> list[BindingPublic]:
    return [
        _binding_public(r)
        for r in bindings.list_bindings(session, namespace)
        if reader.in_namespace(r.namespace)
    ]


@router.delete("/alias-bindings/{ns}/{name}/{alias}", status_code=204, response_class=Response)
def delete_binding(
    ns: str, name: str, alias: AliasName, session: SessionDep, operator: NsOperator
) -> Response:
    bindings.delete_binding(session, operator.name, namespace=ns, model=name, alias=alias)
    session.commit()
    return Response(status_code=204)
