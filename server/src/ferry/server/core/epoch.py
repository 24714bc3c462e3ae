"""The fleet epoch: one counter row that every write shaping a signed document bumps.

Check-in caches (`ferry.server.checkin.cache`) serve stored desired states while
nothing they depend on has changed; they learn of changes from this counter. So
the bump must not depend on *which* process writes: the API of this replica,
another replica, ``ferry keys rotate`` on the host, a migration. It therefore
lives here, below every concept, and is installed by importing the tables: each
concept declares next to its table the columns a desired state, a device
authentication or a signer depends on (`watch`), and any process that can write
such a row has imported its table and with it these session events.

* a transaction that adds or deletes a watched row, changes a watched column, or
  runs an ORM bulk statement on one marks itself; before commit, as its last
  statement (once every other row lock is held, so waiting for the epoch row can
  never close a deadlock cycle), it bumps ``fleet_epoch.value``; after commit it
  calls the engine's local listeners (`on_change`: this replica's cache empties
  at once, other processes see the new value at their next poll); until they
  ran (or the transaction rolled back) the value is *in flight* (`settle`);
* `migrate` in `ferry.server.core.db` bumps it when it applied a revision, since a
  migration writes through Alembic, not through sessions.

Bookkeeping columns (``announced``, ``updated_at``, ``last_seen_at``) are not
watched: writing them keeps every cache. A table may also name watched columns
that matter only in some rows (`watch`'s ``unless``): a rollout member's state
shapes its desired state only once the rollout is halted, cancelled or rolled
back, so the six status reports of every device in a running rollout do not
empty every replica's cache (a change of the rollout's own state does).

A table may also say *whose* documents a change of a row can alter (`watch`'s
``narrow``): opening a rollout's next wave changes only the documents of that
wave's members. A transaction whose every watched change is so narrowed commits
its **scopes** (opaque strings, one row each in ``fleet_change`` keyed by the
epoch value it wrote) and hands them to the local listeners; another replica's
poller reads them for the values it did not write (`scopes`). A bump without
scopes — any other change, a CLI, a migration — voids everything, as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

_WATCHED: dict[type, frozenset[str]] = {}
# Per table: columns whose change is irrelevant in the rows for which the predicate says so.
_UNLESS: dict[type, tuple[frozenset[str], Callable[[Session, Any], bool]]] = {}
# Per table: who can tell, for an updated row, whose documents its change can alter (a scope).
_NARROW: dict[type, Callable[[Session, Any], str | None]] = {}
# Local listeners get the watched tables the commit changed, the epoch value it wrote and
# its scopes (None: the change may alter any document).
Listener = Callable[[frozenset[type], int, frozenset[str] | None], None]
_LISTENERS: WeakKeyDictionary[Engine, list[Listener]] = WeakKeyDictionary()
_BUMP = text("UPDATE fleet_epoch SET value = value + 1 WHERE id = 1 RETURNING value")
READ = text("SELECT value FROM fleet_epoch WHERE id = 1")
_SCOPE = text("INSERT INTO fleet_change (epoch, scope) VALUES (:epoch, :scope)")
_PRUNE = text("DELETE FROM fleet_change WHERE epoch <= :epoch")
_SCOPES = text("SELECT epoch, scope FROM fleet_change WHERE epoch > :seen AND epoch <= :value")
KEPT_SCOPES = 1_000  # epoch values whose scopes stay readable; a poller further behind voids all
_MARK = "ferry_fleet_changed"
_NARROWED = "ferry_fleet_scopes"
_BUMPED = "ferry_fleet_epoch"
# Epoch values this process bumped whose transaction has neither run its after-commit
# listeners nor rolled back yet (see `settle`).
_IN_FLIGHT: set[int] = set()
_SETTLED = threading.Condition()


def watch(
    table: type,
    columns: Iterable[str],
    *,
    unless: tuple[Iterable[str], Callable[[Session, Any], bool]] | None = None,
    narrow: Callable[[Session, Any], str | None] | None = None,
) -> None:
    """Declare the columns of ``table`` that shape a signed document (called by tables.py).

    ``unless=(some_columns, irrelevant)``: a change of only those columns in a row
    for which ``irrelevant(session, row)`` is True does not count. The predicate runs
    after a flush and must not query (it may read the session's identity map); when
    in doubt it returns False. ORM bulk statements always count.

    ``narrow(session, row)``: the scope of an updated row's watched change (whose
    documents it can alter, in a form the caches understand), or None when it may
    alter any. Same rules as ``irrelevant``; inserts and deletes are never narrowed.
    """
    _WATCHED[table] = frozenset(columns)
    if unless is not None:
        _UNLESS[table] = (frozenset(unless[0]), unless[1])
    if narrow is not None:
        _NARROW[table] = narrow


def watched() -> dict[type, frozenset[str]]:
    """What is watched, per table (for tests and docs)."""
    return dict(_WATCHED)


def on_change(engine: Engine, callback: Listener) -> None:
    """Call ``callback(tables, value, scopes)`` after every commit on ``engine`` that bumped
    the epoch: ``tables`` are the watched tables whose existing rows the transaction changed
    or deleted (tables it only inserted into are left out), ``value`` the epoch it committed
    (so a poller can tell this process's bumps from others'), ``scopes`` its narrowed
    changes (None when some change was not narrowed)."""
    _LISTENERS.setdefault(engine, []).append(callback)


def bump(connection: Connection) -> int:
    """Bump the epoch inside ``connection``'s transaction; returns the new value."""
    return int(connection.execute(_BUMP).scalar_one())


def settle(values: Iterable[int], timeout_s: float) -> None:
    """Wait, at most ``timeout_s``, until no commit of this process that bumped one of
    ``values`` is between its database commit and its local listeners.

    A poller that read such a value would otherwise take this process's own change for
    another's (its listener has not reported it yet) and void everything, logins too.
    After the wait a value still unsettled counts as another's: the safe side."""
    wanted = set(values)
    deadline = time.monotonic() + timeout_s
    with _SETTLED:
        while _IN_FLIGHT & wanted and (left := deadline - time.monotonic()) > 0:
            _SETTLED.wait(left)


def _settled(value: int) -> None:
    with _SETTLED:
        _IN_FLIGHT.discard(value)
        _SETTLED.notify_all()


def scopes(connection: Connection, seen: int, value: int) -> dict[int, set[str]]:
    """The scopes committed with the epoch values in ``(seen, value]``; a value missing here
    was not narrowed (or is older than `KEPT_SCOPES`)."""
    found: dict[int, set[str]] = {}
    for number, scope in connection.execute(_SCOPES, {"seen": seen, "value": value}):
        found.setdefault(int(number), set()).add(str(scope))
    return found


def _changed(session: Session, obj: object) -> bool:
    """A watched column of an updated row changed (and the table's ``unless`` does not
    excuse the change)."""
    fields = _WATCHED.get(type(obj))
    if fields is None:
        return False
    attrs = inspect(obj).attrs
    changed = {name for name in fields if attrs[name].history.has_changes()}
    if not changed:
        return False
    excused = _UNLESS.get(type(obj))
    return excused is None or not changed <= excused[0] or not excused[1](session, obj)


def _statement_columns(state: ORMExecuteState) -> set[str] | None:
    """Columns an UPDATE sets, or None when they cannot be told (then it counts as watched)."""
    values = getattr(state.statement, "_values", None)
    if not values:
        return None  # e.g. ORM bulk UPDATE by primary key: the columns are in the parameters
    return {getattr(key, "key", None) or str(key) for key in values}


def _mark(session: Session, table: type, *, existing: bool) -> None:
    """Note a watched change; ``existing``: rows that were there before changed or went
    (False for inserts only: a new row cannot change what was read from the old ones)."""
    marks: dict[type, bool] = session.info.setdefault(_MARK, {})
    marks[table] = marks.get(table, False) or existing


def mark_changed(session: Session, table: type) -> None:
    """Count a change of existing watched rows that a Core statement made (the ORM events
    do not see it): the writer applied the table's ``unless`` rule itself."""
    _mark(session, table, existing=True)


def _narrowed(session: Session, obj: object) -> bool:
    """Note the scope of ``obj``'s change when its table can narrow it; False when not."""
    narrow = _NARROW.get(type(obj))
    scope = narrow(session, obj) if narrow is not None else None
    if scope is None:
        return False
    session.info.setdefault(_NARROWED, set()).add(scope)
    return True


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _flush: UOWTransaction) -> None:
    for obj in session.new:
        if type(obj) in _WATCHED:
            _mark(session, type(obj), existing=False)
    for obj in session.deleted:
        if type(obj) in _WATCHED:
            _mark(session, type(obj), existing=True)
    for obj in session.dirty:
        if _changed(session, obj) and not _narrowed(session, obj):
            _mark(session, type(obj), existing=True)


@event.listens_for(Session, "do_orm_execute")
def _bulk_statement(state: ORMExecuteState) -> Any:
    """ORM bulk UPDATE/DELETE/INSERT (a wave's members, time-outs) skip the flush: run the
    statement here and mark the transaction when it changed watched rows."""
    if not (state.is_update or state.is_delete or state.is_insert):
        return None
    mapper = state.bind_mapper
    fields = _WATCHED.get(mapper.class_) if mapper is not None else None
    if fields is None:
        return None
    columns = _statement_columns(state) if state.is_update else None
    if columns is not None and not columns & fields:
        return None
    result = state.invoke_statement()
    if state.is_insert or getattr(result, "rowcount", 1) != 0:
        _mark(state.session, mapper.class_, existing=not state.is_insert)  # type: ignore[union-attr]
    return result


@event.listens_for(Session, "before_commit")
def _bump_epoch(session: Session) -> None:
    """Bump the shared epoch last (see the module docstring); a transaction whose every
    watched change was narrowed records its scopes with the value."""
    session.flush()
    if not session.info.get(_MARK) and not session.info.get(_NARROWED):
        return
    connection = session.connection()
    value = session.info[_BUMPED] = bump(connection)
    with _SETTLED:
        _IN_FLIGHT.add(value)
    if not session.info.get(_MARK):
        connection.execute(_PRUNE, {"epoch": value - KEPT_SCOPES})
        for scope in sorted(session.info[_NARROWED]):
            connection.execute(_SCOPE, {"epoch": value, "scope": scope})


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    marks = session.info.pop(_MARK, None) or {}
    narrowed = session.info.pop(_NARROWED, None)
    value = session.info.pop(_BUMPED, None)
    if value is None:
        return
    existing = frozenset(table for table, old_rows in marks.items() if old_rows)
    scoped = frozenset(narrowed) if narrowed and not marks else None
    bind = session.bind
    try:
        for callback in _LISTENERS.get(bind, []) if isinstance(bind, Engine) else []:
            callback(existing, value, scoped)
    finally:
        _settled(value)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    value = session.info.get(_BUMPED)
    for key in (_MARK, _NARROWED, _BUMPED):
        session.info.pop(key, None)
    if value is not None:
        _settled(value)
