"""Request and response bodies of the webhook API."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from ferry.server.core.schemas import Strict


class WebhookCreate(Strict):
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=2048)]
    events: Annotated[list[str], Field(min_length=1)]
    secret: Annotated[str, StringConstraints(min_length=8, max_length=512)]


class WebhookPublic(BaseModel):
    id: int
    url: str
    events: list[str]
    created_at: str
    active: bool


class DeliveryPublic(BaseModel):
    id: int
    event_id: int
    event_type: str
    status: str
    attempts: int
    last_error: str | None
    delivered_at: str | None
