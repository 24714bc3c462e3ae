"""Fleet commands: `ferry devices`, `ferry enrollment-token`, `ferry rollout`, `ferry status`.

`ferry rollout show ID --watch` and `ferry status --watch` redraw in place with rich
Live on a terminal, and print one line per change otherwise (`follow`). Guide:
docs/rollouts.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ferry.cli._common import (
    WIDE,
    client,
    fields,
    handle_errors,
    out,
    parse_pairs,
    print_json,
    table,
)
from ferry.client import InputError
from ferry.client._fleet import Device, Rollout, exponential_waves
from ferry.protocol.errors import MalformedError
from ferry.protocol.gates import FAILURE_TYPES, GatePolicy

devices_app = typer.Typer(help="List, show, tag and revoke enrolled devices.", no_args_is_help=True)
token_app = typer.Typer(
    help="Create, list and revoke device enrolment tokens.", no_args_is_help=True
)
rollout_app = typer.Typer(
    help="Roll versions out to devices in waves, and steer them.", no_args_is_help=True
)
status_app = typer.Typer(help="Fleet-wide sync status.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NsOpt = Annotated[str | None, typer.Option("--namespace", "-n", help="Only this namespace.")]
WatchOpt = Annotated[bool, typer.Option("--watch", "-w", help="Refresh live until Ctrl-C.")]
IntervalOpt = Annotated[
    float, typer.Option(help="Seconds between refreshes with --watch.", min=0.2)
]
STATE_COLUMNS = (
    "pending",
    "downloading",
    "installing",
    "committed",
    "failed",
    "rolled_back",
    "timed_out",
)
# Below `WIDE` columns the live view counts states as the progress line does, so that no
# header or number is cut at 80 columns.
NARROW_COLUMNS = {
    "pending": ("pending",),
    "updating": ("downloading", "installing"),
    "committed": ("committed",),
    "failed": ("failed", "rolled_back", "timed_out"),
}


def parse_waves(text: str) -> list[int]:
    """``1,10,50,100`` (cumulative percentages), or ``exp:START,FACTOR[,CAP]`` for waves that
    grow by FACTOR from START to 100, each adding at most CAP points (`exponential_waves`)."""
    if text.startswith("exp:"):
        try:
            start, factor, *cap = (float(p) for p in text[4:].split(","))
            if len(cap) > 1 or not start.is_integer() or any(not c.is_integer() for c in cap):
                raise ValueError("expected START,FACTOR[,CAP] with whole START and CAP")
            return exponential_waves(int(start), factor, int(cap[0]) if cap else None)
        except ValueError as exc:
            raise InputError(f"--waves {text!r}: {exc}; e.g. exp:1,3 or exp:1,2,25") from None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InputError(
            f"--waves {text!r}: give cumulative percentages like 1,10,50,100, "
            "or exp:START,FACTOR[,CAP]"
        ) from exc


T = TypeVar("T")


@dataclass(frozen=True)
class Follow(Generic[T]):
    """What `follow` polls and how it shows it: a live view on a terminal, else lines."""

    fetch: Callable[[], T]
    render: Callable[[T], RenderableType]  # the live view, redrawn on a terminal
    line: Callable[[T], str]  # one line per change, when stdout is not a terminal
    done: Callable[[T], bool] = lambda _: False


def follow(spec: Follow[T], interval: float, deadline: float | None = None) -> tuple[T, bool]:
    """Poll until ``spec.done``, the deadline (monotonic) or Ctrl-C; (last value, done?).

    On a terminal the view redraws in place (rich Live); in a pipe or a log each
    change is one plain line, and an unchanged poll prints nothing.
    """
    value = spec.fetch()
    if not out.is_terminal:
        return _follow_lines(spec, value, interval, deadline)
    with Live(spec.render(value), console=out, auto_refresh=False) as live:
        try:
            while not spec.done(value) and not _past(deadline):
                time.sleep(interval)
                value = spec.fetch()
                live.update(spec.render(value), refresh=True)
        except KeyboardInterrupt:
            pass
    return value, spec.done(value)


def _follow_lines(
    spec: Follow[T], value: T, interval: float, deadline: float | None
) -> tuple[T, bool]:
    last = spec.line(value)
    out.print(escape(last), soft_wrap=True)
    try:
        while not spec.done(value) and not _past(deadline):
            time.sleep(interval)
            value = spec.fetch()
            line = spec.line(value)
            if line != last:
                out.print(escape(line), soft_wrap=True)
                last = line
    except KeyboardInterrupt:
        pass
    return value, spec.done(value)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


# --- enrolment tokens ---------------------------------------------------------------------


GATES = GatePolicy()  # the defaults the options show


def gate_policy(**values: int | None) -> GatePolicy:
    """The policy the options ask for; a value out of range is a usage error, not a traceback."""
    try:
        return GatePolicy(**values)  # type: ignore[arg-type]
    except MalformedError as exc:
        raise InputError(str(exc)) from None


@token_app.command(
    "create",
    epilog="Example: ferry enrollment-token create vision line-3 "
    "--max-uses 50 --expires-in 86400 --tag site=lyon",
)
@handle_errors
def token_create(
    namespace: Annotated[str, typer.Argument(help="Namespace the devices join.")],
    name: Annotated[str, typer.Argument(help="What the token is for, e.g. line-3.")],
    max_uses: Annotated[int | None, typer.Option(help="Devices it may enrol (default 1).")] = 1,
    unlimited: Annotated[
        bool, typer.Option(help="Any number of devices until it expires.")
    ] = False,
    expires_in: Annotated[int | None, typer.Option(help="Seconds until it expires.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE given to each device (repeat).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an enrolment token (operator); the secret is printed once."""
    tags = {k: str(v) for k, v in parse_pairs(tag or [], "--tag", numeric=False).items()}
    with client() as ferry:
        row = ferry.create_enrollment_token(
            namespace,
            name,
            max_uses=None if unlimited else max_uses,
            expires_in_s=expires_in,
            tags=tags,
        )
    if as_json:
        print_json(row.to_json())
        return
    out.print(
        f"created enrolment token {row.id} for namespace {row.namespace} "
        f"(uses: {row.max_uses or 'unlimited'}, expires: {row.expires_at or 'never'})"
    )
    out.print(escape(row.token or ""), soft_wrap=True)


@token_app.command("list", epilog="Example: ferry enrollment-token list -n vision")
@handle_errors
def token_list(namespace: NsOpt = None, as_json: JsonOpt = False) -> None:
    """List enrolment tokens (never their secrets)."""
    with client() as ferry:
        rows = ferry.list_enrollment_tokens(namespace)
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    table(
        ["id", "namespace", "name", "uses", "expires", "revoked"],
        [
            (r.id, r.namespace, r.name, f"{r.uses}/{r.max_uses or '∞'}", r.expires_at, r.revoked_at)
            for r in rows
        ],
    )


@token_app.command("revoke", epilog="Example: ferry enrollment-token revoke 3")
@handle_errors
def token_revoke(token_id: Annotated[int, typer.Argument(help="Token id from `list`.")]) -> None:
    """Revoke an enrolment token; devices already enrolled are not affected."""
    with client() as ferry:
        ferry.revoke_enrollment_token(token_id)
    out.print(f"revoked enrolment token {token_id}")


# --- devices ------------------------------------------------------------------------------


@devices_app.command(
    "list", epilog="Example: ferry devices list -n vision --selector hw=jetson-orin"
)
@handle_errors
def devices_list(
    namespace: NsOpt = None,
    selector: Annotated[str, typer.Option(help="key=value[,key=value] the devices carry.")] = "",
    include_revoked: Annotated[bool, typer.Option(help="Also list revoked devices.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """List enrolled devices."""
    with client() as ferry:
        rows = ferry.list_devices(
            namespace, selector=selector, include_revoked=include_revoked, limit=limit
        )
    if as_json:
        print_json([d.to_json() for d in rows])
        return
    table(
        ["device", "namespace", "hardware", "tags", "installed", "last seen", "revoked"],
        [
            (d.id, d.namespace, d.hardware, _tags(d), _installed(d), d.last_seen_at, d.revoked_at)
            for d in rows
        ],
        optional=("namespace", "last seen"),
    )


def _tags(device: Device) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(device.tags.items()))


def _installed(device: Device) -> str:
    return ", ".join(
        f"{s['slot']}: {s['model']}@{s['installed_version']}"
        for s in device.slots
        if s.get("installed_version") is not None
    )


@devices_app.command("show", epilog="Example: ferry devices show cam-17")
@handle_errors
def devices_show(
    device_id: Annotated[str, typer.Argument(help="Device id.")],
    history: Annotated[int, typer.Option(help="Status reports to show.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Show a device: tags, groups, slots and its status history."""
    with client() as ferry:
        device = ferry.get_device(device_id, history=history)
    if as_json:
        print_json(device.to_json())
        return
    fields(
        [
            ("device", device.id),
            ("namespace", device.namespace),
            ("hardware", device.hardware),
            ("agent", device.agent_version),
            ("tags", _tags(device)),
            ("groups", ", ".join(device.groups)),
            ("enrolled", device.enrolled_at),
            ("last seen", device.last_seen_at),
            ("revoked", device.revoked_at),
            ("desired seq", device.desired_sequence),
        ]
    )
    table(
        ["slot", "model", "installed", "staged", "state", "updated"],
        [
            (
                s["slot"],
                s["model"],
                s["installed_version"],
                s["staged_version"],
                s["state"],
                s["updated_at"],
            )
            for s in device.slots
        ],
        title="slots",
    )
    table(
        ["at", "slot", "state", "from", "to", "error", "rollout"],
        [
            (
                h["at"],
                h["slot"],
                h["state"],
                h["from_version"],
                h["to_version"],
                h["error_code"],
                h["rollout_id"],
            )
            for h in device.history
        ],
        title="status history",
    )


@devices_app.command("tag", epilog="Example: ferry devices tag cam-17 region=eu channel=canary")
@handle_errors
def devices_tag(
    device_id: Annotated[str, typer.Argument(help="Device id.")],
    tags: Annotated[list[str], typer.Argument(help="KEY=VALUE pairs.")],
) -> None:
    """Add or change tags of a device (operator)."""
    pairs = {k: str(v) for k, v in parse_pairs(tags, "tag", numeric=False).items()}
    with client() as ferry:
        device = ferry.tag_device(device_id, add=pairs)
    out.print(f"{device.id}: {_tags(device)}")


@devices_app.command("untag", epilog="Example: ferry devices untag cam-17 channel")
@handle_errors
def devices_untag(
    device_id: Annotated[str, typer.Argument(help="Device id.")],
    keys: Annotated[list[str], typer.Argument(help="Tag keys to remove.")],
) -> None:
    """Remove tags from a device (operator)."""
    with client() as ferry:
        device = ferry.tag_device(device_id, remove=keys)
    out.print(f"{device.id}: {_tags(device)}")


@devices_app.command("revoke", epilog="Example: ferry devices revoke cam-17")
@handle_errors
def devices_revoke(device_id: Annotated[str, typer.Argument(help="Device id.")]) -> None:
    """Revoke a device: 401 on every device endpoint, broker login withdrawn (operator)."""
    with client() as ferry:
        device = ferry.revoke_device(device_id)
    out.print(f"revoked {device.id} at {device.revoked_at}")


# --- rollouts -----------------------------------------------------------------------------


@rollout_app.command("list", epilog="Example: ferry rollout list -n vision --state running")
@handle_errors
def rollout_list(
    namespace: NsOpt = None,
    state: Annotated[str | None, typer.Option(help="Only rollouts in this state.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List rollouts, newest first."""
    with client() as ferry:
        rows = ferry.list_rollouts(namespace, state=state)
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    table(
        ["id", "model", "version", "slot", "selector", "state", "wave", "created"],
        [
            (
                r.id,
                r.model,
                f"v{r.version}",
                r.slot,
                r.selector or "all",
                r.state,
                _wave_label(r),
                r.created_at,
            )
            for r in rows
        ],
        optional=("slot", "created"),
    )


def _wave_label(rollout: Rollout) -> str:
    """``2/4 (10%)``: the wave (1 is the first) of how many, and its cumulative percent."""
    if rollout.wave < 1:
        return "-"
    return f"{rollout.wave}/{len(rollout.waves)} ({rollout.waves[rollout.wave - 1]}%)"


def print_rollout(rollout: Rollout, as_json: bool) -> None:
    if as_json:
        print_json(rollout.to_json())
        return
    fields(
        [
            ("rollout", rollout.id),
            ("model", f"{rollout.model}@{rollout.version}"),
            ("slot", rollout.slot),
            ("selector", rollout.selector or "all devices"),
            ("waves", ",".join(map(str, rollout.waves))),
            ("state", rollout.state),
            ("wave", _wave_label(rollout)),
            ("reason", rollout.reason),
            ("gates", gates_text(rollout.gates)),
            ("auto rollback", "yes" if rollout.auto_rollback else ""),
            ("start at", rollout.start_at),
            ("created", f"{rollout.created_at} by {rollout.created_by}"),
        ]
    )


def gates_text(gates: dict[str, Any]) -> str:
    """``bake 5s, success ≥100%, failures ≤0 or ≤5%, retries 0, timeout 1800s`` and, when
    set, ``, abort on rolled_back >5%`` (the abort criteria per failure type)."""
    limits = [
        f"≤{gates[k]}{unit}"
        for k, unit in (("max_failures", ""), ("max_failure_pct", "%"))
        if gates.get(k) is not None
    ]
    aborts = [
        f"{kind} >{gates[name]}%"
        for kind, name in FAILURE_TYPES.items()
        if gates.get(name) is not None
    ]
    return (
        f"bake {gates.get('bake_s')}s, success ≥{gates.get('min_success_pct')}%, "
        f"failures {' or '.join(limits) or 'unlimited'}, retries {gates.get('max_retries')}, "
        f"timeout {gates.get('in_progress_timeout_s')}s"
        + (f", abort on {', '.join(aborts)}" if aborts else "")
    )


def status_view(status: dict[str, Any]) -> RenderableType:
    """The rollout dashboard: header, one row per wave (every state from `WIDE` columns
    on, `NARROW_COLUMNS` below), the gate."""
    r = status["rollout"]
    head = Text.assemble(
        (f"{r['id']} ", "bold"),
        f"{r['model']}@{r['version']} → ",
        (r["selector"] or "all devices"),
        f"   state: {r['state']}",
        f"   wave {r['wave']}/{len(r['waves'])}" if r["wave"] >= 1 else "",
        f"   in wave {status['time_in_wave_s']}s"
        if status.get("time_in_wave_s") is not None
        else "",
    )
    columns = {s: (s,) for s in STATE_COLUMNS} if out.width >= WIDE else NARROW_COLUMNS
    grid = Table("wave", "%", *columns, "total", "success", show_edge=False, header_style="bold")
    for wave in status["waves"]:
        marker = "▶ " if wave["wave"] == r["wave"] else "  "
        grid.add_row(
            f"{marker}{wave['wave']}",
            str(wave["percent"]),
            *(str(sum(wave["counts"][s] for s in states)) for states in columns.values()),
            str(wave["total"]),
            f"{wave['success_rate']}%",
        )
    gate = status["gate"]
    gate_line = Text(
        " ".join(f"{k}={v}" for k, v in gate.items() if v is not None),
        style="green" if gate.get("status") == "passing" else "",
    )
    return Group(head, grid, Text.assemble(("gate: ", "bold"), gate_line))


def _action(name: str, verb: str) -> None:
    @rollout_app.command(name, epilog=f"Example: ferry rollout {name} r-12")
    @handle_errors
    def command(rollout_id: Annotated[str, typer.Argument(help="Rollout id, e.g. r-12.")]) -> None:
        with client() as ferry:
            rollout = ferry.rollout_action(rollout_id, name)
        out.print(f"{rollout.id}: {rollout.state}, wave {_wave_label(rollout)}")
        if rollout.rollback is not None:
            out.print(escape(rollback_line(rollout)), soft_wrap=True)

    command.__doc__ = verb


def rollback_line(rollout: Rollout) -> str:
    """Who goes back, and who stays on the version because it was their first install."""
    summary = rollout.rollback or {}
    line = f"{summary.get('returning', 0)} device(s) go back to their previous version"
    staying = int(summary.get("without_previous", 0))
    if staying:
        names = list(summary.get("without_previous_devices", []))
        more = f" and {staying - len(names)} more" if staying > len(names) else ""
        line += (
            f"; {staying} had no previous version and stay on v{rollout.version}: "
            f"{', '.join(names)}{more} — to move them, roll out the version they should run "
            f"(a rollback can name it: --baseline VERSION)"
        )
    elif "without a previous version go to" in str(summary.get("reason", "")):
        line += f" ({str(summary['reason']).split('; ', 1)[-1]})"
    return line


_action("pause", "Pause: no wave opens until `resume` (devices keep what they have).")
_action("resume", "Resume (or start a planned rollout at wave 1); the bake clock restarts.")
_action("advance", "Open the next wave now, without waiting for the gate.")
_action("cancel", "Cancel: no new device takes the version; those that did keep it.")


@rollout_app.command("rollback", epilog="Example: ferry rollout rollback r-12 --baseline 6")
@handle_errors
def rollout_rollback(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id, e.g. r-12.")],
    baseline: Annotated[
        int | None,
        typer.Option(help="Version for devices with no previous version (their first install)."),
    ] = None,
) -> None:
    """Send every device that took the version its previous one (signed); devices whose
    first install it was stay on it, or go to --baseline."""
    with client() as ferry:
        rollout = ferry.rollback_rollout(rollout_id, baseline=baseline)
    out.print(f"{rollout.id}: {rollout.state}, wave {_wave_label(rollout)}")
    out.print(escape(rollback_line(rollout)), soft_wrap=True)


@rollout_app.command(
    "bind",
    epilog="Example: ferry rollout bind vision/detector production "
    "--selector hw=jetson-orin --waves 5,50,100 --bake 3600",
)
@handle_errors
def rollout_bind(
    model: Annotated[str, typer.Argument(help="NS/MODEL.")],
    alias: Annotated[str, typer.Argument(help="Alias whose moves plan rollouts.")],
    selector: Annotated[str, typer.Option(help="Devices: key=value[,key=value].")] = "",
    waves: Annotated[str, typer.Option(help="Cumulative percentages.")] = "1,10,50,100",
    bake: Annotated[int, typer.Option(help="Seconds each wave bakes.")] = GATES.bake_s,
    min_success: Annotated[
        int, typer.Option(help="Percent committed needed.")
    ] = GATES.min_success_pct,
    auto_start: Annotated[bool, typer.Option(help="Start planned rollouts at once.")] = False,
    auto_rollback: Annotated[bool, typer.Option(help="Roll back automatically on halt.")] = False,
) -> None:
    """Bind an alias: moving it plans a rollout of its new version (operator)."""
    ns, name = _ns_model(model)
    with client() as ferry:
        ferry.bind_alias(
            ns,
            name,
            alias,
            selector=selector,
            waves=parse_waves(waves),
            gates=gate_policy(bake_s=bake, min_success_pct=min_success),
            auto_start=auto_start,
            auto_rollback=auto_rollback,
        )
    out.print(f"bound {ns}/{name}:{alias} → rollouts at {selector or 'all devices'}")


@rollout_app.command("unbind", epilog="Example: ferry rollout unbind vision/detector production")
@handle_errors
def rollout_unbind(
    model: Annotated[str, typer.Argument(help="NS/MODEL.")],
    alias: Annotated[str, typer.Argument(help="Bound alias.")],
) -> None:
    """Remove an alias binding; moving the alias then plans nothing."""
    ns, name = _ns_model(model)
    with client() as ferry:
        ferry.unbind_alias(ns, name, alias)
    out.print(f"unbound {ns}/{name}:{alias}")


def _ns_model(text: str) -> tuple[str, str]:
    ns, sep, name = text.partition("/")
    if not sep or not ns or not name or "@" in name:
        raise InputError(f"{text!r} is not NS/MODEL, e.g. vision/detector")
    return ns, name


# --- fleet status -------------------------------------------------------------------------


def fleet_view(status: dict[str, Any]) -> RenderableType:
    head = Text(
        f"devices: {status['devices']}   online (last {status['online_window_s']}s): "
        f"{status['online']}   revoked: {status['revoked']}   at {status['at']}"
    )
    grid = Table(show_edge=False, header_style="bold")
    grid.add_column("model", overflow="fold")
    grid.add_column("slot", overflow="fold")
    grid.add_column("installed versions (devices)", overflow="fold")
    for model in status["models"]:
        grid.add_row(
            escape(model["model"]), escape(model["slot"]), escape(version_spread(model, "\n"))
        )
    return Group(head, grid)


def version_spread(model: dict[str, Any], sep: str = ", ") -> str:
    """``no version (first install rolled back): 2, v16: 10, v17: 28`` (a version and its
    count are never split: the table puts one per line)."""
    return sep.join(
        f"{_version_name(v, model.get('without_version', {}))}: {n}"
        for v, n in sorted(model["versions"].items(), key=_version_order)
    )


def fleet_line(status: dict[str, Any]) -> str:
    """`ferry status --watch` in a pipe: one line per change of the counts."""
    spreads = "; ".join(f"{m['model']}#{m['slot']} {version_spread(m)}" for m in status["models"])
    return (
        f"devices {status['devices']}, online {status['online']}, revoked "
        f"{status['revoked']}" + (f" | {spreads}" if spreads else "")
    )


# Why a device has a slot of this model but no version installed, by the slot's last state.
NO_VERSION = {
    "rolled_back": "first install rolled back",
    "failed": "first install failed",
    "idle": "not installed yet",
}


def _version_name(version: str, without: dict[str, int]) -> str:
    """``v17``; for "none", what state those devices are in (never ``vnone``)."""
    if version.isdigit():
        return f"v{version}"
    why = ", ".join(
        f"{NO_VERSION.get(state, state)}" + (f" {n}" if len(without) > 1 else "")
        for state, n in sorted(without.items())
    )
    return f"no version ({why})" if why else "no version"


def _version_order(item: tuple[str, int]) -> tuple[int, int]:
    """Numbers in numeric order; "none" (nothing installed) first."""
    return (1, int(item[0])) if item[0].isdigit() else (0, 0)


@status_app.callback(invoke_without_command=True, epilog="Example: ferry status -n vision --watch")
@handle_errors
def fleet_status(
    namespace: NsOpt = None,
    watch: WatchOpt = False,
    interval: IntervalOpt = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """Fleet-wide status: devices online, installed versions per model."""
    with client() as ferry:
        if as_json:
            print_json(ferry.fleet_status(namespace))
        elif watch:
            follow(Follow(lambda: ferry.fleet_status(namespace), fleet_view, fleet_line), interval)
        else:
            out.print(fleet_view(ferry.fleet_status(namespace)))
