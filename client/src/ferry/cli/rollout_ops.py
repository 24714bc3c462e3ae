"""The operator's questions about a rollout: `ferry rollout plan` (and `create`), `show`,
`wait`, `devices`.

Registered on `ferry rollout` (``fleet_cmds.rollout_app``). Text is for people and
fits 80 columns: the device id, wave and state are never cut; the last-report
column is dropped on narrow terminals and the error message wraps. ``--json`` is
for scripts, and so are the exit codes of `wait` (`WAIT_EXIT`). Guide:
docs/rollouts.md, docs/cli.md.
"""

from __future__ import annotations

import inspect
import time
from typing import Annotated, Any

import typer
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table

from ferry.cli._common import (
    client,
    err,
    handle_errors,
    out,
    parse_version_ref,
    print_json,
    table,
)
from ferry.cli.fleet_cmds import (
    GATES,
    Follow,
    IntervalOpt,
    JsonOpt,
    follow,
    gate_policy,
    parse_waves,
    print_rollout,
    rollout_app,
    status_view,
)
from ferry.client import FerryClient, InputError
from ferry.client._fleet import RolloutMember, RolloutMembersPage
from ferry.protocol.gates import FAILURE_TYPES

WIDE = 120  # from this width on, the last-report column is shown too
MESSAGE_LINES = 3  # of a long probe output, the text view shows the last lines (JSON: all)

RolloutArg = Annotated[str, typer.Argument(help="Rollout id, e.g. r-12.")]

# `ferry rollout wait`: the exit code says how the rollout ended (docs/cli.md).
WAIT_EXIT = {"completed": 0, "halted": 3, "rolled_back": 4, "cancelled": 5}
WAIT_TIMED_OUT = 124  # --timeout passed first (as GNU timeout(1) does)
FINAL_STATES = frozenset(WAIT_EXIT)  # nothing more happens without an operator


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


def fetch_members(
    ferry: FerryClient, rollout_id: str, state: str | None, wave: int | None, limit: int
) -> tuple[RolloutMembersPage, list[RolloutMember]]:
    """The first page (for its total) and up to ``limit`` devices, following the cursor."""
    first = page = ferry.rollout_devices(rollout_id, state=state, wave=wave, limit=min(limit, 500))
    rows = list(page.devices)
    while page.next_cursor is not None and len(rows) < limit:
        page = ferry.rollout_devices(
            rollout_id,
            state=state,
            wave=wave,
            limit=min(limit - len(rows), 500),
            cursor=page.next_cursor,
        )
        rows += page.devices
    return first, rows[:limit]


def _filters(state: str | None, wave: int | None) -> str:
    parts = [f"state {state}" if state else "", f"wave {wave}" if wave else ""]
    return ", ".join(p for p in parts if p)


@rollout_app.command(
    "devices", epilog="Example: ferry rollout devices r-12 --state failed --wave 2"
)
@handle_errors
def rollout_devices(
    rollout_id: RolloutArg,
    state: Annotated[
        str | None,
        typer.Option(
            help="Only devices in this state: pending, downloading, installing, committed, "
            "in_progress, failed (= failed, rolled_back or timed_out), rolled_back, "
            "timed_out; a comma list for several."
        ),
    ] = None,
    wave: Annotated[
        int | None, typer.Option(help="Only this wave (1 is the first).", min=1)
    ] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many devices.", min=1)] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """List the devices of a rollout: state, wave, time in state, error and why."""
    with client() as ferry:
        first, rows = fetch_members(ferry, rollout_id, state, wave, limit)
    total = first.total
    if as_json:
        print_json(
            {
                "rollout_id": first.rollout_id,
                "total": total,
                "shown": len(rows),
                "devices": [r.to_json() for r in rows],
            }
        )
        return
    where = _filters(state, wave)
    out.print(
        f"{first.rollout_id}: {total} device{'' if total == 1 else 's'}"
        + (f" ({where})" if where else "")
    )
    if rows:
        out.print(members_table(rows, out.width))
    if total > len(rows):
        out.print(f"… {total - len(rows)} more; raise --limit or use --json")


# --- show, watch and wait ----------------------------------------------------------------


def progress_line(status: dict[str, Any]) -> str:
    """One line of a rollout's progress; equal lines mean nothing an operator cares about
    changed (the bake countdown is left out, so a quiet rollout prints nothing)."""
    r, totals, devices = status["rollout"], status["totals"], status["devices"]
    head = f"{r['id']} {r['state']}"
    if r["wave"] >= 1:
        head += f" wave {r['wave']}/{len(r['waves'])} ({r['waves'][r['wave'] - 1]}%)"
    failed = totals["failed"] + totals["rolled_back"] + totals["timed_out"]
    updating = totals["downloading"] + totals["installing"]
    counts = (
        f"{totals['committed']}/{devices} committed, {failed} failed, {updating} updating, "
        f"{totals['pending']} pending"
    )
    gate = status["gate"]
    tail = f"gate {gate['status']}" if r["state"] == "running" else r["reason"]
    return f"{head}: {counts}" + (f"; {tail}" if tail else "")


def final_line(status: dict[str, Any]) -> str:
    """How the rollout ended, and where to look next when it did not complete."""
    r = status["rollout"]
    line = f"{r['id']} {r['state']}: {status['totals']['committed']}/{status['devices']} committed"
    if r["reason"]:
        line += f" ({r['reason']})"
    if r["state"] != "completed":
        line += f" — see `ferry rollout devices {r['id']} --state failed`"
    return line


def _ended(status: dict[str, Any]) -> bool:
    return str(status["rollout"]["state"]) in FINAL_STATES


def _status_follow(ferry: FerryClient, rollout_id: str) -> Follow[dict[str, Any]]:
    return Follow(
        fetch=lambda: ferry.rollout_status(rollout_id),
        render=status_view,
        line=progress_line,
        done=_ended,
    )


@rollout_app.command("show", epilog="Example: ferry rollout show r-12 --watch")
@handle_errors
def rollout_show(
    rollout_id: RolloutArg,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Follow it until it ends (completed, halted, "
            "rolled back or cancelled) or Ctrl-C; in a pipe, one line per change.",
        ),
    ] = False,
    interval: IntervalOpt = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """Show a rollout's sync status per wave: counts by state, success rate, gate."""
    with client() as ferry:
        if as_json:
            print_json(ferry.rollout_status(rollout_id))
        elif watch:
            follow(_status_follow(ferry, rollout_id), interval)
        else:
            out.print(status_view(ferry.rollout_status(rollout_id)))


@rollout_app.command(
    "wait", epilog="Example: ferry rollout wait r-12 --timeout 3600 && echo deployed"
)
@handle_errors
def rollout_wait(
    rollout_id: RolloutArg,
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds (exit 124).", min=0)
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between polls.", min=0.2)] = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """Block until the rollout ends; the exit code says how.

    0 completed, 3 halted, 4 rolled back, 5 cancelled, 124 --timeout passed first
    (1 and 2 are errors and bad usage, as for every command). Progress is a line per
    change when stdout is not a terminal, a live view when it is; --json prints the
    final status only.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    with client() as ferry:
        spec = _status_follow(ferry, rollout_id)
        if as_json:
            status, ended = _poll_quietly(spec, interval, deadline)
        else:
            status, ended = follow(spec, interval, deadline)
    if as_json:
        print_json(status)
    elif ended:
        out.print(escape(final_line(status)), soft_wrap=True)
    if not ended:
        err.print(
            f"{rollout_id} is still {status['rollout']['state']} after {timeout:g} s; "
            f"`ferry rollout wait {rollout_id}` again to keep waiting",
            soft_wrap=True,
        )
        raise typer.Exit(WAIT_TIMED_OUT)
    raise typer.Exit(WAIT_EXIT[status["rollout"]["state"]])


def _poll_quietly(
    spec: Follow[dict[str, Any]], interval: float, deadline: float | None
) -> tuple[dict[str, Any], bool]:
    status = spec.fetch()
    while not spec.done(status) and (deadline is None or time.monotonic() < deadline):
        time.sleep(interval)
        status = spec.fetch()
    return status, spec.done(status)


# --- plan and create ---------------------------------------------------------------------

PLAN_REFUSED = 1  # `rollout plan` / `create --dry-run`: creating would be refused
MEMBERS_SHOWN = 10  # device ids printed per wave (all of them with --json)


def plan_view(plan: dict[str, Any], members: int) -> None:
    """The plan for a person: header, one row per wave, skipped/incompatible, refusals."""
    selector = plan["selector"] or "all devices"
    out.print(
        escape(
            f"plan: {plan['model']}@{plan['version']} → {selector} (slot "
            f"{plan['slot']}), waves {','.join(map(str, plan['waves']))}"
        ),
        soft_wrap=True,
    )
    out.print(
        f"matching devices: {plan['matching']}, targeted: {plan['targeted']}"
        + (f", skipped: {len(plan['skipped'])}" if plan["skipped"] else "")
        + (f", incompatible: {len(plan['incompatible'])}" if plan["incompatible"] else "")
    )
    table(
        ["wave", "%", "devices", "full", "delta", "none", "bytes"],
        [
            (
                w["wave"],
                w["percent"],
                w["count"],
                *_kinds(w["devices"]),
                decimal(sum(d["bytes"] for d in w["devices"])),
            )
            for w in plan["wave_members"]
        ],
    )
    downloads = plan["downloads"]
    out.print(
        f"total: {decimal(plan['total_bytes'])} to serve — {downloads['full']} full, "
        f"{downloads['delta']} delta, {downloads['none']} already on it"
    )
    if plan["beyond_last_wave"]:
        out.print(
            f"{plan['beyond_last_wave']} matching device(s) fall beyond the last wave "
            f"({plan['waves'][-1]}%) and are not updated"
        )
    _members(plan, members)
    for title, rows in (
        ("skipped (incompatible)", plan["skipped"]),
        ("incompatible", plan["incompatible"]),
    ):
        if rows:
            table(
                ["device", "hardware", "why"],
                [(d["device_id"], d["hardware"], d["reason"]) for d in rows],
                title=title,
            )
    for refusal in plan["refusals"]:
        out.print(f"[red]refused:[/red] {escape(refusal['message'])}", soft_wrap=True)


def _kinds(devices: list[dict[str, Any]]) -> tuple[int, int, int]:
    full, delta, none = (
        sum(d["download"] == k for d in devices) for k in ("full", "delta", "none")
    )
    return full, delta, none


def _members(plan: dict[str, Any], most: int) -> None:
    if most == 0:
        return
    for wave in plan["wave_members"]:
        names = [d["device_id"] for d in wave["devices"]]
        more = f" … and {len(names) - most} more" if len(names) > most else ""
        out.print(
            escape(f"wave {wave['wave']}: {', '.join(names[:most]) or '-'}{more}"), soft_wrap=False
        )


def parse_abort_on(terms: list[str]) -> dict[str, int]:
    """``timed_out=10`` → ``{"max_timed_out_pct": 10}``; a typo is a usage error."""
    found: dict[str, int] = {}
    for term in terms:
        kind, _, pct = term.partition("=")
        name = FAILURE_TYPES.get(kind.strip())
        if name is None or not pct.strip().isdigit():
            raise InputError(
                f"--abort-on {term!r}: use TYPE=PCT with TYPE one of "
                f"{', '.join(FAILURE_TYPES)} (e.g. timed_out=10)"
            )
        found[name] = int(pct)
    return found


@rollout_app.command(
    "create",
    epilog="Example: ferry rollout create vision/detector@7 "
    "--selector 'hw in (x86_64,aarch64),region=eu' --waves "
    "1,10,50,100 --bake 1800 --min-success 98 --max-failures 2",
)
@handle_errors
def rollout_create(
    target: Annotated[str, typer.Argument(help="NS/MODEL@VERSION or NS/MODEL@ALIAS.")],
    selector: Annotated[
        str,
        typer.Option(
            help="Devices: key=value and key in (v1,v2) terms, joined by commas; empty = all."
        ),
    ] = "",
    waves: Annotated[str, typer.Option(help="Cumulative percentages.")] = "1,10,50,100",
    slot: Annotated[str, typer.Option(help="Model slot on the device.")] = "main",
    skip_incompatible: Annotated[
        bool,
        typer.Option(
            help="Target only devices whose hardware the version supports; list the others."
        ),
    ] = False,
    allow_empty: Annotated[
        bool,
        typer.Option(
            help="Accept a selector that matches no device (it then updates devices as they enrol)."
        ),
    ] = False,
    bake: Annotated[
        int, typer.Option(help="Seconds each wave bakes before the gate.")
    ] = GATES.bake_s,
    min_success: Annotated[
        int, typer.Option(help="Percent committed needed to advance.")
    ] = GATES.min_success_pct,
    max_failures: Annotated[
        int | None, typer.Option(help="Halt beyond this many failures.")
    ] = GATES.max_failures,
    max_failure_pct: Annotated[
        int | None, typer.Option(help="Halt beyond this % failed.")
    ] = GATES.max_failure_pct,
    retries: Annotated[int, typer.Option(help="Retries per failed device.")] = GATES.max_retries,
    retry_backoff: Annotated[
        int, typer.Option(help="Seconds before the first retry (doubles).")
    ] = GATES.retry_backoff_s,
    timeout: Annotated[
        int, typer.Option(help="Seconds in progress before timed_out.")
    ] = GATES.in_progress_timeout_s,
    auto_rollback: Annotated[bool, typer.Option(help="Roll back automatically on halt.")] = False,
    abort_on: Annotated[
        list[str] | None,
        typer.Option(
            help="Halt when one failure type passes its own %: TYPE=PCT with TYPE failed, "
            "rolled_back or timed_out (repeatable)."
        ),
    ] = None,
    start_at: Annotated[
        str | None, typer.Option(help="Start time, e.g. 2026-11-26T02:00:00Z.")
    ] = None,
    paused: Annotated[
        bool, typer.Option(help="Create paused; start with `rollout resume`.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option(help="Print the plan (as `rollout plan`) and create nothing.")
    ] = False,
    members: Annotated[
        int, typer.Option(help="Device ids shown per wave in a plan.", min=0)
    ] = MEMBERS_SHOWN,
    as_json: JsonOpt = False,
) -> None:
    """Create a rollout (operator): Production versions, or Staging on channel=canary."""
    ns, model, ref = parse_version_ref(target)
    gates = gate_policy(
        bake_s=bake,
        min_success_pct=min_success,
        max_failures=max_failures,
        max_failure_pct=max_failure_pct,
        max_retries=retries,
        retry_backoff_s=retry_backoff,
        in_progress_timeout_s=timeout,
        **parse_abort_on(abort_on or []),
    )
    where: dict[str, Any] = {
        "selector": selector,
        "waves": parse_waves(waves),
        "slot": slot,
        "skip_incompatible": skip_incompatible,
        "allow_empty": allow_empty,
    }
    with client() as ferry:
        if dry_run:
            plan = ferry.plan_rollout(ns, model, ref, **where)
        else:
            rollout = ferry.create_rollout(
                ns,
                model,
                ref,
                **where,
                gates=gates,
                auto_rollback=auto_rollback,
                start_at=start_at,
                start_paused=paused,
            )
    if not dry_run:
        print_rollout(rollout, as_json)
        return
    if as_json:
        print_json(plan)
    else:
        plan_view(plan, members)
    if plan["refusals"]:
        raise typer.Exit(PLAN_REFUSED)


def rollout_plan(**options: Any) -> None:
    """Plan a rollout: devices per wave, downloads, skipped devices — create nothing.

    Takes the options of `rollout create`; exits 1 when creating would be refused.
    """
    rollout_create(**options, dry_run=True)


_PLAN_ONLY = {
    "dry_run",
    "paused",
    "start_at",
    "auto_rollback",
    "bake",
    "min_success",
    "max_failures",
    "max_failure_pct",
    "retries",
    "retry_backoff",
    "timeout",
}
_create = inspect.signature(rollout_create, eval_str=True)
rollout_plan.__signature__ = _create.replace(  # type: ignore[attr-defined]
    parameters=[p for p in _create.parameters.values() if p.name not in _PLAN_ONLY]
)
rollout_app.command(
    "plan",
    epilog="Example: ferry rollout plan vision/detector@7 --selector "
    "'hw in (x86_64,aarch64)' --skip-incompatible",
)(rollout_plan)


# --- editing the gates of a running rollout --------------------------------------------

_GATE_OPTIONS = {
    "bake": "bake_s",
    "min_success": "min_success_pct",
    "max_failures": "max_failures",
    "max_failure_pct": "max_failure_pct",
    "retries": "max_retries",
    "retry_backoff": "retry_backoff_s",
    "timeout": "in_progress_timeout_s",
}


@rollout_app.command(
    "gates",
    epilog="Example: ferry rollout gates r-12 --bake 3600 "
    "--max-failures 5   (--no-max-failures removes the limit)",
)
@handle_errors
def rollout_gates(
    rollout_id: RolloutArg,
    bake: Annotated[int | None, typer.Option(help="Seconds each wave bakes.")] = None,
    min_success: Annotated[int | None, typer.Option(help="Percent committed to advance.")] = None,
    max_failures: Annotated[
        int | None, typer.Option(help="Halt beyond this many failures.")
    ] = None,
    no_max_failures: Annotated[bool, typer.Option(help="Remove the failure count limit.")] = False,
    max_failure_pct: Annotated[int | None, typer.Option(help="Halt beyond this % failed.")] = None,
    no_max_failure_pct: Annotated[bool, typer.Option(help="Remove the failure % limit.")] = False,
    retries: Annotated[int | None, typer.Option(help="Retries per failed device.")] = None,
    retry_backoff: Annotated[
        int | None, typer.Option(help="Seconds before the first retry.")
    ] = None,
    timeout: Annotated[
        int | None, typer.Option(help="Seconds in progress before timed_out.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change the gates of a rollout that has not ended (operator; audited)."""
    given = {
        "bake": bake,
        "min_success": min_success,
        "max_failures": max_failures,
        "max_failure_pct": max_failure_pct,
        "retries": retries,
        "retry_backoff": retry_backoff,
        "timeout": timeout,
    }
    changes: dict[str, int | None] = {
        _GATE_OPTIONS[k]: v for k, v in given.items() if v is not None
    }
    if no_max_failures:
        changes["max_failures"] = None
    if no_max_failure_pct:
        changes["max_failure_pct"] = None
    if not changes:
        raise InputError("give at least one gate to change, e.g. --bake 3600")
    with client() as ferry:
        answer = ferry.edit_rollout_gates(rollout_id, **changes)
    if as_json:
        print_json(answer)
        return
    changed = answer.get("changed", {})
    out.print(
        escape(
            f"{answer['id']} gates: "
            + (
                ", ".join(f"{name} {c['from']} → {c['to']}" for name, c in changed.items())
                or "unchanged"
            )
        ),
        soft_wrap=True,
    )
