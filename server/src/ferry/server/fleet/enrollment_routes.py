"""Enrolment tokens (operators) and device enrolment (devices, with a token in the body)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from ferry.protocol.errors import MalformedError
from ferry.protocol.timefmt import format_time, parse_time
from ferry.server.api.deps import RowId, SessionDep, require
from ferry.server.auth.service import Principal, ServerRole
from ferry.server.core.errors import ValidationFailedError
from ferry.server.fleet import enrollment
from ferry.server.fleet.runtime import FleetRuntime, get_runtime
from ferry.server.fleet.schemas import (
    Enrolled,
    EnrollmentTokenCreate,
    EnrollmentTokenCreated,
    EnrollmentTokenPublic,
    EnrollRequest,
    MqttLogin,
)
from ferry.server.fleet.tables import EnrollmentToken
from ferry.server.trust import service as trust

router = APIRouter(tags=["fleet"])
Operator = Annotated[Principal, Depends(require(ServerRole.OPERATOR, namespace_param=None))]
RuntimeDep = Annotated[FleetRuntime, Depends(get_runtime)]


def _public(row: EnrollmentToken) -> EnrollmentTokenPublic:
    return EnrollmentTokenPublic.model_validate(row, from_attributes=True)


@router.post("/enrollment-tokens", status_code=201)
def create_token(
    body: EnrollmentTokenCreate, session: SessionDep, operator: Operator, runtime: RuntimeDep
) -> EnrollmentTokenCreated:
    operator.require((ServerRole.OPERATOR,), body.namespace)
    if body.expires_at is not None and body.expires_in_s is not None:
        raise ValidationFailedError("give expires_at or expires_in_s, not both")
    expires_at = body.expires_at
    if body.expires_in_s is not None:
        expires_at = format_time(runtime.now() + timedelta(seconds=body.expires_in_s))
    elif expires_at is not None:
        try:
            parse_time(expires_at, "expires_at")
        except MalformedError as exc:
            raise ValidationFailedError(str(exc)) from exc
    row, secret = enrollment.create_token(
        session,
        operator,
        namespace=body.namespace,
        name=body.name,
        max_uses=body.max_uses,
        expires_at=expires_at,
        tags=body.tags,
    )
    session.commit()
    return EnrollmentTokenCreated(**_public(row).model_dump(), token=secret)


@router.get("/enrollment-tokens")
def list_tokens(
    session: SessionDep, operator: Operator, namespace: str | None = None
) -> list[EnrollmentTokenPublic]:
    return [_public(row) for row in enrollment.list_tokens(session, operator, namespace)]


@router.delete("/enrollment-tokens/{token_id}", status_code=204, response_class=Response)
def revoke_token(
    token_id: RowId, session: SessionDep, operator: Operator, runtime: RuntimeDep
) -> Response:
    enrollment.revoke_token(session, operator, token_id, runtime.now())
    session.commit()
    return Response(status_code=204)


@router.post("/device/enroll", status_code=201)
def enroll(body: EnrollRequest, session: SessionDep, runtime: RuntimeDep) -> Enrolled:
    """No bearer token: the enrolment token in the body is the credential."""
    done = enrollment.enroll(
        session,
        token=body.enrollment_token,
        device_id=body.device_id,
        hardware=body.hardware,
        agent_version=body.agent_version,
        tags=body.tags,
        now=runtime.now(),
        credential=body.credential,
    )
    keyring = json.loads(trust.get_envelope(session))
    session.commit()
    runtime.broker_sync.credentials_changed()
    url = runtime.broker_url
    return Enrolled(
        device_id=done.device.id,
        credential=done.credential,
        keyring=keyring,
        groups=done.device.groups,
        mqtt=MqttLogin(url=url, username=done.device.id, password=done.mqtt_password)
        if url
        else None,
        poll_interval_s=runtime.settings.poll_interval_s,
    )
