"""The device side: signed desired state and status ingest (``frd_`` credentials only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from ferry.protocol.documents import Role, StatusReport
from ferry.protocol.errors import MalformedError
from ferry.server.api.deps import CtxDep, SessionDep, require
from ferry.server.auth import Principal, ServerRole
from ferry.server.errors import ForbiddenError, ValidationFailedError
from ferry.server.fleet.credentials import device_id_of
from ferry.server.fleet.desired import desired_state_envelope
from ferry.server.fleet.ingest import ingest_reports
from ferry.server.fleet.runtime import FleetRuntime, get_runtime
from ferry.server.fleet.schemas import StatusAccepted, StatusBatch

router = APIRouter(tags=["device"])
RuntimeDep = Annotated[FleetRuntime, Depends(get_runtime)]


def _device(principal: Annotated[Principal, Depends(require(ServerRole.DEVICE,
                                                            namespace_param=None))]) -> str:
    """The calling device's id; admin tokens pass `require` but are not devices."""
    if principal.role is not ServerRole.DEVICE:
        raise ForbiddenError("this endpoint is for devices (an frd_ credential from enrolment)")
    return device_id_of(principal)


DeviceId = Annotated[str, Depends(_device)]
ENVELOPE = {200: {"content": {"application/json": {"schema": {"type": "object"}}},
                  "description": "signed desired-state envelope {signed, signatures}"}}


@router.get("/device/desired-state", response_class=Response, responses=ENVELOPE)
def desired_state(device_id: DeviceId, session: SessionDep, ctx: CtxDep,
                  runtime: RuntimeDep) -> Response:
    body = desired_state_envelope(session, device_id, runtime.now(),
                                  runtime.settings.desired_state_ttl_s,
                                  lambda: ctx.keys.key(session, Role.DIRECTOR))
    session.commit()
    return Response(body, media_type="application/json")


@router.post("/device/status")
def post_status(body: StatusBatch, device_id: DeviceId, session: SessionDep,
                runtime: RuntimeDep) -> StatusAccepted:
    reports = []
    for index, raw in enumerate(body.reports):
        try:
            reports.append(StatusReport.from_dict(raw))
        except MalformedError as exc:
            raise ValidationFailedError(f"reports[{index}]: {exc}", {"index": index}) from exc
    result = ingest_reports(session, device_id, reports, runtime.now())
    session.commit()
    return StatusAccepted(accepted=result.accepted, duplicates=result.duplicates)
