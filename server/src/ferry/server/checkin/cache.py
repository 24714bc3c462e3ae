"""Signed desired states served from memory while nothing that shapes them has changed.

A device checks in every poll interval and on every MQTT notice; nearly always
its stored document is still the right one. Recomputing that (authenticate,
load the device, compute its claims, check the signer) costs ~3 ms of server CPU
per check-in — 15 times a bare uvicorn request. So each replica keeps, per
device credential, the envelope it last served, stamped with a **generation**:

* every write transaction that can change a desired state, an authentication
  or a signer — rollouts, rollout membership, a device's tags, groups, hardware,
  namespace, credential or revocation, the keyring — marks itself in SQLAlchemy
  session events, bumps ``fleet_epoch.value`` as its last statement before
  commit, and once committed bumps this replica's generation, emptying its
  cache at once;
* `EpochPoller` reads ``fleet_epoch`` every ``checkin_cache_poll_s`` and bumps
  the generation when another replica committed such a change (a failed read
  empties the cache too, so nothing unverified is served).

An entry is served only while its generation is current and its document is
further than a quarter of its lifetime from expiry. A replica therefore sees its
own changes immediately and another replica's within one poll interval (a
revocation made on replica B is refused by replica A at most that much later).
Anything not in the cache goes through the full route, which fills it.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from ferry.server.fleet.tables import Device
from ferry.server.rollouts.tables import Rollout, RolloutDevice
from ferry.server.trust.tables import KeyringVersion

MAX_ENTRIES = 200_000  # ~1 KB each: a bound on memory, far above one replica's fleet share
# Per table, the columns a desired state, an authentication or a signer depends on
# (`ferry.server.checkin.desired`); bookkeeping such as ``announced`` or ``updated_at`` is not.
_WATCHED: dict[type, frozenset[str]] = {
    Rollout: frozenset({"namespace", "model", "slot", "version", "manifest_sha256", "hardware",
                        "selector", "waves", "state", "wave", "retry_generation"}),
    RolloutDevice: frozenset({"wave", "state", "attempts", "from_version", "from_manifest"}),
    Device: frozenset({"revoked_at", "tags", "groups", "hardware", "namespace",
                       "credential_hash"}),
    KeyringVersion: frozenset({"version", "envelope", "expires_at"}),
}
_BUMP = text("UPDATE fleet_epoch SET value = value + 1 WHERE id = 1")
_READ = text("SELECT value FROM fleet_epoch WHERE id = 1")
_MARK = "ferry_fleet_changed"


def credential_key(secret: str) -> str:
    """Cache key of a device credential (its hash: the secret itself is never kept)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Entry:
    device_id: str
    body: bytes
    expires_at: datetime
    generation: int


class CheckinCache:
    """Per-replica cache of served envelopes, keyed by credential hash."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self.generation = 0
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def lookup(self, key: str, now: datetime, ttl_s: int) -> Entry | None:
        """The entry when its generation is current and its document is far from expiry."""
        entry = self._entries.get(key)
        if entry is None or entry.generation != self.generation:
            return None
        if entry.expires_at <= now + timedelta(seconds=ttl_s // 4):
            return None
        return entry

    def store(self, key: str, entry: Entry) -> None:
        """Keep ``entry`` unless a change committed since its generation was read."""
        with self._lock:
            if entry.generation != self.generation:
                return
            if key not in self._entries and len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest
            self._entries[key] = entry

    def invalidate(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries = {}

    def __len__(self) -> int:
        return len(self._entries)


# --- change tracking: SQLAlchemy session events, routed to the cache of the session's engine ---

_CACHES: WeakKeyDictionary[Engine, CheckinCache] = WeakKeyDictionary()


def track_changes(engine: Engine, cache: CheckinCache) -> None:
    """Invalidate ``cache`` whenever a session on ``engine`` commits a relevant change."""
    _CACHES[engine] = cache


def _cache_of(session: Session) -> CheckinCache | None:
    bind = session.bind
    return _CACHES.get(bind) if isinstance(bind, Engine) else None


def _changed(obj: object) -> bool:
    """A watched column of an updated row changed."""
    fields = _WATCHED.get(type(obj))
    if fields is None:
        return False
    attrs = inspect(obj).attrs
    return any(attrs[name].history.has_changes() for name in fields)


def _statement_columns(state: ORMExecuteState) -> set[str] | None:
    """Columns an UPDATE sets, or None when they cannot be told (then it counts as watched)."""
    values = getattr(state.statement, "_values", None)
    if not values:
        return None  # e.g. ORM bulk UPDATE by primary key: the columns are in the parameters
    return {getattr(key, "key", None) or str(key) for key in values}


def _mark(session: Session) -> None:
    session.info[_MARK] = True


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _flush: UOWTransaction) -> None:
    if _cache_of(session) is None:
        return
    added_or_removed = [*session.new, *session.deleted]
    if any(type(obj) in _WATCHED for obj in added_or_removed) or \
            any(_changed(obj) for obj in session.dirty):
        _mark(session)


@event.listens_for(Session, "do_orm_execute")
def _bulk_statement(state: ORMExecuteState) -> Any:
    """ORM bulk UPDATE/DELETE/INSERT (a wave's members, time-outs) skip the flush: run the
    statement here and mark the transaction when it changed watched rows."""
    if not (state.is_update or state.is_delete or state.is_insert):
        return None
    mapper = state.bind_mapper
    fields = _WATCHED.get(mapper.class_) if mapper is not None else None
    if fields is None or _cache_of(state.session) is None:
        return None
    columns = _statement_columns(state) if state.is_update else None
    if columns is not None and not columns & fields:
        return None
    result = state.invoke_statement()
    if state.is_insert or getattr(result, "rowcount", 1) != 0:
        _mark(state.session)
    return result


@event.listens_for(Session, "before_commit")
def _bump_epoch(session: Session) -> None:
    """Bump the shared epoch last, once every other row lock is held: a transaction holding
    the epoch row then only commits, so waiting for it can never close a deadlock cycle."""
    if _cache_of(session) is None:
        return
    session.flush()
    if session.info.get(_MARK):
        session.connection().execute(_BUMP)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_MARK, False):
        cache = _cache_of(session)
        if cache is not None:
            cache.invalidate()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_MARK, None)


# --- other replicas' changes ------------------------------------------------------------------


class EpochPoller:
    """Reads ``fleet_epoch``; a new value empties this replica's cache (run by `Periodic`)."""

    def __init__(self, cache: CheckinCache, engine: Engine) -> None:
        self.cache = cache
        self.engine = engine
        self._seen: Any = None

    def check(self) -> bool:
        """One poll; True when the epoch moved since the last one."""
        with self.engine.connect() as connection:
            value = connection.execute(_READ).scalar_one()
        moved = self._seen is not None and value != self._seen
        self._seen = value
        if moved:
            self.cache.invalidate()
        return moved
