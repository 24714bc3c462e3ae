"""Device records for operators: list, show (with status history), tag, untag, revoke,
approve a re-enrolment."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlmodel import Session

from ferry.server.api.deps import Reader, ReadSessionDep, SessionDep, require
from ferry.server.auth.service import Principal, ServerRole
from ferry.server.core.numbers import MAX_ROW_ID
from ferry.server.fleet import devices, enrollment
from ferry.server.fleet.runtime import FleetRuntime, get_runtime
from ferry.server.fleet.schemas import (
    DeviceDetail,
    DevicePublic,
    ReenrollmentApproved,
    ReportPublic,
    SlotPublic,
    TagsChange,
)
from ferry.server.fleet.selectors import parse_selector
from ferry.server.fleet.tables import Device

router = APIRouter(tags=["fleet"])
Operator = Annotated[Principal, Depends(require(ServerRole.OPERATOR, namespace_param=None))]
RuntimeDep = Annotated[FleetRuntime, Depends(get_runtime)]


def device_public(session: Session, device: Device) -> DevicePublic:
    slots = [
        SlotPublic.model_validate(s, from_attributes=True)
        for s in devices.device_slots(session, device.id)
    ]
    return DevicePublic(
        id=device.id,
        namespace=device.namespace,
        hardware=device.hardware,
        agent_version=device.agent_version,
        tags=device.tags,
        groups=device.groups,
        enrolled_at=device.enrolled_at,
        last_seen_at=device.last_seen_at,
        revoked_at=device.revoked_at,
        desired_sequence=device.ds_sequence,
        slots=slots,
    )


@router.get("/devices")
def list_devices(
    session: ReadSessionDep,
    reader: Reader,
    namespace: str | None = None,
    selector: str = "",
    include_revoked: bool = False,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> list[DevicePublic]:
    rows = devices.list_devices(
        session,
        reader,
        namespace=namespace,
        selector=parse_selector(selector),
        include_revoked=include_revoked,
        limit=limit,
        offset=offset,
    )
    return [device_public(session, d) for d in rows]


@router.get("/devices/{device_id}")
def show_device(
    device_id: str,
    session: ReadSessionDep,
    reader: Reader,
    history: Annotated[int, Query(ge=0, le=1000)] = 50,
) -> DeviceDetail:
    device = devices.get_device(session, reader, device_id)
    reports = [
        ReportPublic.model_validate(r, from_attributes=True)
        for r in devices.history(session, device_id, history)
    ]
    return DeviceDetail(**device_public(session, device).model_dump(), history=reports)


@router.post("/devices/{device_id}/tags")
def tag_device(
    device_id: str, body: TagsChange, session: SessionDep, operator: Operator
) -> DevicePublic:
    device = devices.get_device(session, operator, device_id)
    operator.require((ServerRole.OPERATOR,), device.namespace)
    devices.change_tags(session, operator, device, add=body.add, remove=body.remove)
    session.commit()
    return device_public(session, device)


@router.post("/devices/{device_id}/revoke")
def revoke_device(
    device_id: str, session: SessionDep, operator: Operator, runtime: RuntimeDep
) -> DevicePublic:
    """The credential stops working at once (401); broker access goes with the next sync."""
    device = devices.get_device(session, operator, device_id)
    operator.require((ServerRole.OPERATOR,), device.namespace)
    changed = devices.revoke(session, operator, device, runtime.now())
    session.commit()
    if changed:
        runtime.broker_sync.credentials_changed()
    return device_public(session, device)


@router.post("/devices/{device_id}/approve-reenrollment")
def approve_reenrollment(
    device_id: str, session: SessionDep, operator: Operator, runtime: RuntimeDep
) -> ReenrollmentApproved:
    """One enrolment of this id without its current credential (a device that lost it)."""
    device = devices.get_device(session, operator, device_id)
    until = enrollment.approve_reenrollment(session, operator, device, runtime.now())
    session.commit()
    return ReenrollmentApproved(device_id=device.id, reenrollment_approved_until=until)
