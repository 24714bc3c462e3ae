"""The operator's questions about a running rollout: `ferry rollout devices` (who failed, why).

Registered on `ferry rollout` (``fleet_cmds.rollout_app``). Text is for people and
fits 80 columns: the device id, wave and state are never cut; the last-report
column is dropped on narrow terminals and the error message wraps. ``--json`` is
for scripts. Guide: docs/rollouts.md, docs/cli.md.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ferry.cli._common import client, handle_errors, out, print_json
from ferry.cli.fleet_cmds import JsonOpt, rollout_app
from ferry.client import FerryClient
from ferry.client._fleet import RolloutMember, RolloutMembersPage

WIDE = 120  # from this width on, the last-report column is shown too
MESSAGE_LINES = 3  # of a long probe output, the text view shows the last lines (JSON: all)

RolloutArg = Annotated[str, typer.Argument(help="Rollout id, e.g. r-12.")]


def duration(seconds: int) -> str:
    """``45s``, ``4m05s``, ``2h03m``, ``3d04h``: short and sortable by eye."""
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def short_message(text: str | None) -> str:
    """The last few lines of a message (a probe's traceback ends with its reason)."""
    if not text:
        return ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-MESSAGE_LINES:])


def members_table(rows: list[RolloutMember], width: int) -> Table:
    """One row per device; ``width`` decides whether the last-report column fits."""
    wide = width >= WIDE
    grid = Table(show_edge=False, header_style="bold", expand=False)
    grid.add_column("device", no_wrap=True)
    grid.add_column("wave", no_wrap=True, justify="right")
    grid.add_column("state", no_wrap=True)
    grid.add_column("for", no_wrap=True, justify="right")
    if wide:
        grid.add_column("last report", no_wrap=True)
    grid.add_column("error", overflow="fold")
    for row in rows:
        error = "\n".join(p for p in (row.error_code or "", short_message(row.error_message)) if p)
        cells = [row.device_id, str(row.wave), row.state, duration(row.time_in_state_s)]
        if wide:
            cells.append(row.last_report_at or "never")
        grid.add_row(*(escape(c) for c in [*cells, error]))
    return grid


def fetch_members(ferry: FerryClient, rollout_id: str, state: str | None, wave: int | None,
                  limit: int) -> tuple[RolloutMembersPage, list[RolloutMember]]:
    """The first page (for its total) and up to ``limit`` devices, following the cursor."""
    first = page = ferry.rollout_devices(rollout_id, state=state, wave=wave,
                                         limit=min(limit, 500))
    rows = list(page.devices)
    while page.next_cursor is not None and len(rows) < limit:
        page = ferry.rollout_devices(rollout_id, state=state, wave=wave,
                                     limit=min(limit - len(rows), 500), cursor=page.next_cursor)
        rows += page.devices
    return first, rows[:limit]


def _filters(state: str | None, wave: int | None) -> str:
    parts = [f"state {state}" if state else "", f"wave {wave}" if wave else ""]
    return ", ".join(p for p in parts if p)


@rollout_app.command("devices", epilog="Example: ferry rollout devices r-12 --state failed "
                                       "--wave 2")
@handle_errors
def rollout_devices(
    rollout_id: RolloutArg,
    state: Annotated[str | None, typer.Option(
        help="Only devices in this state: pending, downloading, installing, committed, "
             "in_progress, failed (= failed, rolled_back or timed_out), rolled_back, "
             "timed_out; a comma list for several.")] = None,
    wave: Annotated[int | None, typer.Option(help="Only this wave (1 is the first).",
                                             min=1)] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many devices.", min=1)] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """List the devices of a rollout: state, wave, time in state, error and why."""
    with client() as ferry:
        first, rows = fetch_members(ferry, rollout_id, state, wave, limit)
    total = first.total
    if as_json:
        print_json({"rollout_id": first.rollout_id, "total": total, "shown": len(rows),
                    "devices": [r.to_json() for r in rows]})
        return
    where = _filters(state, wave)
    out.print(f"{first.rollout_id}: {total} device{'' if total == 1 else 's'}"
              + (f" ({where})" if where else ""))
    if rows:
        out.print(members_table(rows, out.width))
    if total > len(rows):
        out.print(f"… {total - len(rows)} more; raise --limit or use --json")
