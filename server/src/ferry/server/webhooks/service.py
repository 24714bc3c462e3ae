"""Events and webhook delivery (transactional outbox).

`emit_event` writes the event and one delivery row per matching subscription in
the caller's transaction, so an event exists exactly when the change it announces
was committed. `WebhookWorker` (an asyncio task started by the app's lifespan)
POSTs due deliveries with an HMAC signature and reschedules failures with
exponential backoff stored in the row; after ``max_attempts`` it gives up and
records the last error. Claiming a delivery is a conditional UPDATE, so several
server replicas can run workers against one database without double sends.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from ferry.server.core.columns import utc_now
from ferry.server.core.db import session_scope
from ferry.server.webhooks.tables import EventOutbox, WebhookDelivery, WebhookSubscription

log = logging.getLogger("ferry.server.webhooks.service")

VERSION_CREATED = "version.created"
STAGE_CHANGED = "stage.changed"
ROLLOUT_STATE_CHANGED = "rollout.state_changed"
EVENT_TYPES = frozenset({VERSION_CREATED, STAGE_CHANGED, ROLLOUT_STATE_CHANGED})

SIGNATURE_HEADER = "X-Ferry-Signature"
EVENT_HEADER = "X-Ferry-Event"
DELIVERY_HEADER = "X-Ferry-Delivery"
CLAIM_LEASE_SECONDS = 60.0
BATCH = 20


def emit_event(session: Session, event_type: str, payload: dict[str, Any]) -> EventOutbox:
    """Queue ``event_type`` for every active subscriber, inside the caller's transaction."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    event = EventOutbox(event_type=event_type, payload=payload)
    session.add(event)
    session.flush()
    subs = session.exec(select(WebhookSubscription).where(WebhookSubscription.active == True)).all()
    for sub in subs:
        if event_type in sub.events:
            assert event.id is not None and sub.id is not None
            session.add(
                WebhookDelivery(
                    event_id=event.id, subscription_id=sub.id, next_attempt_at=time.time()
                )
            )
    return event


def sign_body(secret: str, body: bytes) -> str:
    """The ``X-Ferry-Signature`` value: ``sha256=<hex hmac of the raw body>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def event_body(event: EventOutbox) -> bytes:
    return json.dumps(
        {
            "id": event.id,
            "type": event.event_type,
            "created_at": event.created_at,
            "data": event.payload,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


@dataclass(frozen=True)
class _Job:
    delivery_id: int
    attempts: int
    url: str
    secret: str
    event_type: str
    body: bytes


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    backoff_seconds: float = 2.0
    timeout_seconds: float = 10.0

    def delay(self, attempts: int) -> float:
        """Wait before attempt ``attempts + 1``: base · 2^(attempts-1)."""
        return self.backoff_seconds * (2.0 ** max(0, attempts - 1))


class WebhookWorker:
    """Delivers due webhook rows until stopped."""

    def __init__(
        self,
        engine: Engine,
        policy: RetryPolicy,
        poll_seconds: float = 1.0,
        read_engine: Engine | None = None,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.on_outcome = on_outcome  # delivered, failed (will retry) or gave_up; for metrics
        self.read_engine = read_engine or engine
        self.policy = policy
        self.poll_seconds = poll_seconds
        self._stop = asyncio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self.policy.timeout_seconds) as client:
            while not self._stop.is_set():
                jobs: list[_Job] = []
                try:
                    jobs = await anyio.to_thread.run_sync(self._claim_due)
                    for job in jobs:
                        await self._deliver(client, job)
                except Exception:  # a bad row or a DB hiccup must not kill the worker
                    log.exception("webhook worker iteration failed")
                if not jobs_pending_soon(jobs):
                    try:
                        await asyncio.wait_for(self._stop.wait(), self.poll_seconds)
                    except TimeoutError:
                        pass

    def stop(self) -> None:
        self._stop.set()

    def _claim_due(self) -> list[_Job]:
        now = time.time()
        jobs: list[_Job] = []
        if not self._any_due(now):  # polled every second: no write lock while idle
            return jobs
        with session_scope(self.engine) as session:
            due = session.exec(
                select(WebhookDelivery)
                .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
                .order_by(col(WebhookDelivery.next_attempt_at))
                .limit(BATCH)
            ).all()
            for row in due:
                claimed = session.exec(
                    update(WebhookDelivery)
                    .where(
                        col(WebhookDelivery.id) == row.id,
                        col(WebhookDelivery.next_attempt_at) == row.next_attempt_at,
                    )
                    .values(next_attempt_at=now + CLAIM_LEASE_SECONDS)
                )
                if claimed.rowcount != 1:
                    continue
                sub = session.get(WebhookSubscription, row.subscription_id)
                event = session.get(EventOutbox, row.event_id)
                assert sub is not None and event is not None and row.id is not None
                jobs.append(
                    _Job(
                        row.id,
                        row.attempts,
                        sub.url,
                        sub.secret,
                        event.event_type,
                        event_body(event),
                    )
                )
        return jobs

    def _any_due(self, now: float) -> bool:
        with Session(self.read_engine) as session:
            found = session.exec(
                select(WebhookDelivery.id)
                .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
                .limit(1)
            ).first()
            session.rollback()
        return found is not None

    async def _deliver(self, client: httpx.AsyncClient, job: _Job) -> None:
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: job.event_type,
            DELIVERY_HEADER: str(job.delivery_id),
            SIGNATURE_HEADER: sign_body(job.secret, job.body),
        }
        error: str | None = None
        try:
            response = await client.post(job.url, content=job.body, headers=headers)
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        await anyio.to_thread.run_sync(self._record, job, error)

    def _record(self, job: _Job, error: str | None) -> None:
        attempts = job.attempts + 1
        with session_scope(self.engine) as session:
            row = session.get(WebhookDelivery, job.delivery_id)
            assert row is not None
            row.attempts = attempts
            if error is None:
                row.status, row.delivered_at, row.last_error = "delivered", utc_now(), None
            elif attempts >= self.policy.max_attempts:
                row.status, row.last_error = "failed", error
                log.warning(
                    "webhook delivery %s gave up after %d attempts: %s",
                    job.delivery_id,
                    attempts,
                    error,
                )
            else:
                row.last_error = error
                row.next_attempt_at = time.time() + self.policy.delay(attempts)
            session.add(row)
        if self.on_outcome is not None:
            self.on_outcome(
                "delivered"
                if error is None
                else "gave_up"
                if attempts >= self.policy.max_attempts
                else "failed"
            )


def jobs_pending_soon(jobs: list[_Job]) -> bool:
    """A full batch means more may be due: loop again without sleeping."""
    return len(jobs) >= BATCH
