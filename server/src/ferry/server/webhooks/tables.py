"""Webhook subscriptions, the event outbox and per-subscription deliveries."""

from __future__ import annotations

from typing import Any

from sqlmodel import Field, SQLModel

from ferry.server.core.columns import json_field, utc_now


class WebhookSubscription(SQLModel, table=True):
    __tablename__ = "webhook_subscription"

    id: int | None = Field(default=None, primary_key=True)
    url: str
    events: list[str] = json_field(list)
    secret: str
    active: bool = True
    created_at: str = Field(default_factory=utc_now)


class EventOutbox(SQLModel, table=True):
    """An event, written in the same transaction as the change it announces."""

    __tablename__ = "event_outbox"

    id: int | None = Field(default=None, primary_key=True)
    event_type: str = Field(index=True)
    payload: dict[str, Any] = json_field(dict)
    created_at: str = Field(default_factory=utc_now)


class WebhookDelivery(SQLModel, table=True):
    """One event to one subscriber; the retry schedule lives in the row."""

    __tablename__ = "webhook_delivery"

    id: int | None = Field(default=None, primary_key=True)
    event_id: int = Field(foreign_key="event_outbox.id", index=True)
    subscription_id: int = Field(foreign_key="webhook_subscription.id", index=True)
    status: str = Field(default="pending", index=True)
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    delivered_at: str | None = None
