"""Domain events: a concept states a fact, the concepts above it react in the same transaction.

This keeps the import arrows pointing down: the registry does not call rollouts
when an alias moves, and the fleet does not edit rollout cohorts when a device
is revoked — each publishes an event (`ferry.server.registry.events`,
`ferry.server.fleet.events`) and `ferry.server.rollouts` subscribes
(`ferry.server.wiring.subscribe_domain_events`, called by `create_app`).
Handlers run synchronously inside the publisher's session, so what they write
commits or rolls back with the change that caused it. (Webhooks are a different
thing: the outbox in `ferry.server.webhooks` delivers to the outside world after
commit.)
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

from sqlmodel import Session

E = TypeVar("E")
Handler = Callable[[Session, Any], None]

_handlers: dict[type, list[Handler]] = defaultdict(list)
_lock = threading.Lock()


def subscribe(event_type: type[E], handler: Callable[[Session, E], None]) -> None:
    """Call ``handler(session, event)`` for every published ``event_type``; idempotent."""
    with _lock:
        if handler not in _handlers[event_type]:
            _handlers[event_type].append(handler)


def publish(session: Session, event: object) -> None:
    """Run every handler of ``type(event)`` in the caller's transaction, in subscription order."""
    with _lock:
        handlers = list(_handlers.get(type(event), ()))
    for handler in handlers:
        handler(session, event)
