"""Signed desired states served from memory while nothing that shapes them has changed.

A device checks in every poll interval and on every MQTT notice; nearly always
its stored document is still the right one. Recomputing that (authenticate,
load the device, compute its claims, check the signer) costs ~3 ms of server CPU
per check-in — 15 times a bare uvicorn request. So each replica keeps, per
device credential, the envelope it last served, stamped with a **generation**:

* every committed write that can change a desired state, an authentication or a
  signer — from this replica, another one, ``ferry keys rotate`` on the host or a
  migration — bumps ``fleet_epoch.value`` (`ferry.server.core.epoch`); a commit on
  this replica's engine also bumps this replica's generation, emptying its cache
  at once;
* `EpochPoller` reads ``fleet_epoch`` every ``checkin_cache_poll_s`` and bumps
  the generation when another replica committed such a change (a failed read
  empties the cache too, so nothing unverified is served). Each local commit
  reports the epoch value it wrote, so the poller tells this replica's own bumps
  (already applied at commit) from the others' and does not empty the cache a
  second time for them. A poll that reads a value whose local commit has not
  reported it yet waits for that report (`epoch.settle`, up to ``SETTLE_S``):
  taken for another replica's, an enrolment would empty the device logins.

An entry is served only while its generation is current and its document is
further than a quarter of its lifetime from expiry. A replica therefore sees its
own changes immediately and another replica's within one poll interval (a
revocation made on replica B is refused by replica A at most that much later).
Anything not in the cache goes through the full route, which fills it.

A **wave change** alters only the documents of the devices that join: each entry
keeps the device's (rollout, wave) memberships, and a bump whose scopes are all
`WaveScope` (`ferry.server.core.epoch`, "narrowed") voids only the entries
those scopes cover — at commit on this replica, at the next poll on the others,
which read the scopes of the values they did not write. The survivors move to the
new generation, so an entry computed before the change is still never stored.

A second map holds **device logins**: credential hash → the device's
`Principal`, filled by `cached_device_authenticator` on every device route
(manifest, blob, status, desired state). A device's login depends only on
watched ``device`` columns (``credential_hash``, ``revoked_at``, ``namespace``),
so it has its own ``login_generation``: a local commit that changed or deleted
a device row (a revocation, a re-enrolment) empties it at once, one that only
enrolled new devices or changed rollouts keeps it; another replica's change (the poller cannot tell which
table) empties it within one poll interval, like the documents.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from ferry.protocol.endpoints import DEVICE_TOKEN_PREFIX
from ferry.protocol.keys import SigningKey
from ferry.server.auth.service import Principal
from ferry.server.core import epoch
from ferry.server.core.context import Authenticator
from ferry.server.fleet.tables import Device
from ferry.server.rollouts.machine import WaveScope

# A device's login depends on device rows only (credential_hash, revoked_at, namespace).
LOGIN_TABLES = frozenset({Device})
MAX_ENTRIES = 200_000  # ~1 KB each: a bound on memory, far above one replica's fleet share
SETTLE_S = 1.0  # how long a poll waits for this process's commits it read to report themselves


def credential_key(secret: str) -> str:
    """Cache key of a device credential (its hash: the secret itself is never kept)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Entry:
    device_id: str
    body: bytes
    expires_at: datetime
    generation: int
    memberships: frozenset[tuple[int, int]] = frozenset()  # (rollout pk, wave)


class CheckinCache:
    """Per-replica cache of served envelopes, keyed by credential hash."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self.generation = 0
        self.login_generation = 0  # moves only with changes that can affect a login
        self.known_epoch: int | None = None  # the fleet epoch this replica last read
        self._entries: dict[str, Entry] = {}
        self._logins: dict[str, tuple[Principal, int]] = {}
        self._director: tuple[SigningKey, int] | None = None
        self._local_epochs: set[int] = set()  # epoch values this replica's commits wrote
        self._lock = threading.Lock()

    def lookup(
        self, key: str, now: datetime, ttl_s: int, min_epoch: int | None = None
    ) -> Entry | None:
        """The entry when its generation is current and its document is far from expiry.

        ``min_epoch`` comes from a notice the device received: while this replica has
        not read that epoch yet, the entry may predate the change it announced.
        """
        if min_epoch is not None and (self.known_epoch is None or min_epoch > self.known_epoch):
            return None
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

    def login(self, key: str) -> Principal | None:
        """The device principal of credential hash ``key``, while its generation is current."""
        found = self._logins.get(key)
        if found is None or found[1] != self.login_generation:
            return None
        return found[0]

    def remember_login(self, key: str, principal: Principal, generation: int) -> None:
        """Keep a login read at login ``generation`` unless a change committed since."""
        with self._lock:
            if generation != self.login_generation:
                return
            if key not in self._logins and len(self._logins) >= self.max_entries:
                del self._logins[next(iter(self._logins))]
            self._logins[key] = (principal, generation)

    def director_key(self, load: Callable[[], SigningKey]) -> SigningKey:
        """The director key, read (``load``: a keyring-version query) once per generation: a
        rotated keyring is a watched change, so it moves the generation."""
        found = self._director
        if found is not None and found[1] == self.generation:
            return found[0]
        generation = self.generation
        key = load()
        with self._lock:
            if generation == self.generation:
                self._director = (key, generation)
        return key

    def changed_here(
        self, tables: frozenset[type], value: int, scopes: frozenset[str] | None
    ) -> None:
        """A commit on this replica bumped the epoch to ``value``: void what it changed (the
        entries its ``scopes`` cover, or all; the logins only when a device row changed), and
        remember the value so that the poller does not take it for another replica's change.
        When every earlier value is known, this one is too: a device sent a notice naming it
        is served from the cache without waiting for the next poll."""
        if scopes is not None:
            self.void(scopes)
        else:
            self.invalidate(logins=bool(tables & LOGIN_TABLES))
        with self._lock:
            self._local_epochs.add(value)
            if self.known_epoch == value - 1:
                self.known_epoch = value

    def foreign_since(self, seen: int, value: int) -> list[int] | None:
        """The epoch values in ``(seen, value]`` bumped elsewhere (another replica, a CLI, a
        migration, or a local commit whose listener has not run yet); None when they cannot
        be told (the counter went back or jumped too far)."""
        with self._lock:
            local, self._local_epochs = (
                self._local_epochs,
                {v for v in self._local_epochs if v > value},
            )
        if value < seen or value - seen > 10_000:
            return None
        return [v for v in range(seen + 1, value + 1) if v not in local]

    def void(self, scopes: Iterable[str]) -> None:
        """Void the entries of the devices ``scopes`` cover (all of them when one is not a
        `WaveScope`); the others move to a new generation, logins stay."""
        decoded = [WaveScope.decode(scope) for scope in scopes]
        known = [scope for scope in decoded if scope is not None]
        if len(known) != len(decoded):
            self.invalidate(logins=False)
            return
        with self._lock:
            self.generation += 1
            self._entries = {
                key: replace(entry, generation=self.generation)
                for key, entry in self._entries.items()
                if not any(scope.covers(entry.memberships) for scope in known)
            }

    def invalidate(self, *, logins: bool = True) -> None:
        """Empty the cache; ``logins=False`` (a local change that touched no device row)
        keeps the device logins."""
        with self._lock:
            self.generation += 1
            self._entries = {}
            if logins:
                self.login_generation += 1
                self._logins = {}

    def __len__(self) -> int:
        return len(self._entries)


def cached_device_authenticator(
    cache: CheckinCache, authenticate: Authenticator, enabled: Callable[[], bool]
) -> Authenticator:
    """The ``frd_`` authenticator with its answers kept in ``cache`` (see the module doc).

    Only successful logins are kept: an unknown or revoked credential is looked up
    every time (and keeps being refused). While ``enabled()`` is False (the check-in
    cache is off), every request is looked up.
    """

    def cached(session: Session, secret: str) -> Principal | None:
        if not enabled():
            return authenticate(session, secret)
        if not secret.startswith(DEVICE_TOKEN_PREFIX):
            return None
        key = credential_key(secret)
        principal = cache.login(key)
        if principal is not None:
            return principal
        generation = cache.login_generation  # before reading: a change meanwhile voids it
        principal = authenticate(session, secret)
        if principal is not None:
            cache.remember_login(key, principal, generation)
        return principal

    return cached


def track_changes(engine: Engine, cache: CheckinCache) -> None:
    """Invalidate ``cache`` whenever a session on ``engine`` commits a relevant change."""
    epoch.on_change(engine, cache.changed_here)


# --- other replicas' changes ------------------------------------------------------------------


class EpochPoller:
    """Reads ``fleet_epoch``; another replica's change voids what it changed here (run by
    `Periodic`)."""

    def __init__(self, cache: CheckinCache, engine: Engine) -> None:
        self.cache = cache
        self.engine = engine
        self._seen: int | None = None

    def check(self) -> bool:
        """One poll; True when the epoch moved since the last one by a change made elsewhere
        (this replica's own commits voided their part already)."""
        with self.engine.connect() as connection:
            value = int(connection.execute(epoch.READ).scalar_one())
            seen = self._seen
            if seen is not None and value > seen:
                epoch.settle(range(seen + 1, value + 1), SETTLE_S)
            foreign = (
                self.cache.foreign_since(seen, value) if seen is not None and value != seen else []
            )
            scopes = self._scopes(connection, seen or 0, value, foreign)
        self._seen = value
        if foreign is None or scopes is None:
            self.cache.invalidate()
        elif foreign:
            self.cache.void(scopes)
        self.cache.known_epoch = value
        return foreign != []

    @staticmethod
    def _scopes(
        connection: Connection, seen: int, value: int, foreign: list[int] | None
    ) -> set[str] | None:
        """The scopes of the ``foreign`` values; None when one of them was not narrowed."""
        if not foreign:
            return set()
        found = epoch.scopes(connection, seen, value)
        if any(v not in found for v in foreign):
            return None
        return {scope for v in foreign for scope in found[v]}
