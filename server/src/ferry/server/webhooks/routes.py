"""Webhook subscriptions (admin). Delivery is done by `ferry.server.webhooks.service.WebhookWorker`."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlmodel import col, select

from ferry.server.api.deps import Admin, ReadSessionDep, RowId, SessionDep
from ferry.server.audit import service as audit
from ferry.server.core.errors import NotFoundError, ValidationFailedError
from ferry.server.webhooks.schemas import DeliveryPublic, WebhookCreate, WebhookPublic
from ferry.server.webhooks.service import EVENT_TYPES
from ferry.server.webhooks.tables import EventOutbox, WebhookDelivery, WebhookSubscription

router = APIRouter(tags=["webhooks"])


def _public(row: WebhookSubscription) -> WebhookPublic:
    return WebhookPublic.model_validate(row, from_attributes=True)


@router.post("/webhooks", status_code=201)
def create(body: WebhookCreate, session: SessionDep, admin: Admin) -> WebhookPublic:
    unknown = sorted(set(body.events) - EVENT_TYPES)
    if unknown:
        raise ValidationFailedError(f"unknown events {unknown}", {"known": sorted(EVENT_TYPES)})
    row = WebhookSubscription(url=body.url, events=sorted(set(body.events)), secret=body.secret)
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=admin.name,
        action="webhook.create",
        target=f"webhook:{row.id}",
        details={"url": row.url, "events": row.events},
    )
    session.commit()
    return _public(row)


@router.get("/webhooks")
def list_all(session: ReadSessionDep, _: Admin) -> list[WebhookPublic]:
    rows = session.exec(
        select(WebhookSubscription)
        .where(WebhookSubscription.active == True)
        .order_by(col(WebhookSubscription.id))
    ).all()
    return [_public(row) for row in rows]


@router.delete("/webhooks/{webhook_id}", status_code=204, response_class=Response)
def delete(webhook_id: RowId, session: SessionDep, admin: Admin) -> Response:
    """Deactivate (rows stay, so past deliveries keep their subscriber)."""
    row = session.get(WebhookSubscription, webhook_id)
    if row is None or not row.active:
        raise NotFoundError(f"webhook {webhook_id} does not exist")
    row.active = False
    session.add(row)
    audit.append(session, actor=admin.name, action="webhook.delete", target=f"webhook:{row.id}")
    session.commit()
    return Response(status_code=204)


@router.get("/webhooks/{webhook_id}/deliveries")
def deliveries(webhook_id: RowId, session: ReadSessionDep, _: Admin) -> list[DeliveryPublic]:
    """Delivery attempts for one subscription, newest first (status, attempts, last error)."""
    if session.get(WebhookSubscription, webhook_id) is None:
        raise NotFoundError(f"webhook {webhook_id} does not exist")
    rows = session.exec(
        select(WebhookDelivery, EventOutbox.event_type)
        .join(EventOutbox, col(EventOutbox.id) == col(WebhookDelivery.event_id))
        .where(WebhookDelivery.subscription_id == webhook_id)
        .order_by(col(WebhookDelivery.id).desc())
        .limit(1000)
    ).all()
    return [
        DeliveryPublic(
            id=d.id,
            event_id=d.event_id,
            event_type=event_type,
            status=d.status,
            attempts=d.attempts,
            last_error=d.last_error,
            delivered_at=d.delivered_at,
        )
        for d, event_type in rows
    ]
