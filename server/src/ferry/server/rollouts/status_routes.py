"""Sync status: per rollout (waves, counts, gate, devices) and fleet-wide (installed versions)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from ferry.server.api.deps import Reader, ReadSessionDep
from ferry.server.auth.service import ALL_NAMESPACES, ServerRole
from ferry.server.fleet.runtime import FleetRuntime, get_runtime
from ferry.server.rollouts import service
from ferry.server.rollouts.members import MAX_PAGE, MemberQuery, list_members, parse_states
from ferry.server.rollouts.status import fleet_status, rollout_status

router = APIRouter(tags=["status"])
RuntimeDep = Annotated[FleetRuntime, Depends(get_runtime)]


@router.get("/rollouts/{rollout_id}/status")
def get_rollout_status(
    rollout_id: str, session: ReadSessionDep, reader: Reader, runtime: RuntimeDep
) -> dict[str, Any]:
    rollout = service.get_rollout(session, reader, rollout_id)
    return rollout_status(session, rollout, runtime.now())


@router.get("/rollouts/{rollout_id}/devices")
def get_rollout_devices(
    rollout_id: str,
    session: ReadSessionDep,
    reader: Reader,
    runtime: RuntimeDep,
    state: str | None = None,
    wave: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> dict[str, Any]:
    """The rollout's devices, a page at a time: state, wave (1-based), last report, error
    code and message, time in state. ``state`` is a comma list; ``failed`` covers every
    failure (failed, rolled_back, timed_out). Follow ``next_cursor`` until it is null."""
    rollout = service.get_rollout(session, reader, rollout_id)
    query = MemberQuery(states=parse_states(state), wave=wave, limit=limit, cursor=cursor)
    return list_members(session, rollout, query, runtime.now())


@router.get("/fleet/status")
def get_fleet_status(
    session: ReadSessionDep,
    reader: Reader,
    runtime: RuntimeDep,
    namespace: str | None = None,
    online_window_s: Annotated[int, Query(ge=1, le=30 * 86400)] = 300,
) -> dict[str, Any]:
    """Counts devices online within ``online_window_s`` and installed versions per model."""
    if namespace is not None:
        reader.require((reader.role,), namespace)
        scope: list[str] | None = [namespace]
    elif reader.role is ServerRole.ADMIN or ALL_NAMESPACES in reader.namespaces:
        scope = None
    else:
        scope = list(reader.namespaces)
    return fleet_status(session, scope, runtime.now(), online_window_s)
