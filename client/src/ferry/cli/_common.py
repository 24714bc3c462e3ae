"""What every `ferry` command shares: the client, output, argument parsing, error exit.

Expected failures (bad input, server errors, unreachable server, refused downloads)
end as one line on stderr saying what went wrong and what to do, with exit code 1
(2 for bad usage/input); only a bug shows a traceback.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ferry.client import (
    ClientError,
    FerryClient,
    InputError,
    TransferProgress,
    load_config,
)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

P = ParamSpec("P")
R = TypeVar("R")

_HINTS = {
    "unauthenticated": "run `ferry configure --token …` (or set FERRY_TOKEN) with a valid token",
    "forbidden": "your token's role or namespaces do not allow this — `ferry whoami` shows them",
    "not_configured": "",
    "unreachable": "",
    "rate_limited": "wait a moment and retry",
}


def describe(exc: ClientError) -> str:
    """One line: status and code, the message, and a hint when we have one."""
    hint = _HINTS.get(exc.code, "")
    if exc.code in (
        "hash_mismatch",
        "length_exceeded",
        "truncated",
        "bad_signature",
        "untrusted_key",
        "manifest_mismatch",
        "expired_keyring",
        "keyring_rollback",
        "malformed",
        "incompatible_hardware",
    ):
        hint = (
            "nothing was written under its final name; do not use this server's data "
            "until the cause is understood"
        )
    details = _validation_details(exc.details)
    prefix = "" if exc.code in ("bad_input", "not_configured") else f"{exc.code}: "
    if exc.status:
        prefix = f"{exc.status} {prefix}"
    text = f"{prefix}{exc.message}{details}"
    return f"{text} — {hint}" if hint else text


def listed_devices(details: Any) -> list[str]:
    """The devices a refusal names (e.g. those that cannot run the version), one a line."""
    if not isinstance(details, dict) or not isinstance(details.get("incompatible_devices"), list):
        return []
    rows = [d for d in details["incompatible_devices"] if isinstance(d, dict)]
    lines = [
        f"  {d.get('device_id')} ({d.get('hardware')}): {d.get('reason', 'incompatible')}"
        for d in rows
    ]
    count = details.get("count")
    if isinstance(count, int) and count > len(rows):
        lines.append(f"  … and {count - len(rows)} more (`ferry rollout plan` lists them all)")
    return lines


def _validation_details(details: Any) -> str:
    """Name the bad fields of a validation error (details.errors) or the legal stage
    transitions of a conflict (details.legal)."""
    if not isinstance(details, dict):
        return ""
    legal = details.get("legal")
    if isinstance(legal, list):
        return f" (legal from here: {', '.join(map(str, legal)) or 'none'})"
    problems = details.get("errors")
    if not isinstance(problems, list) or not problems:
        return ""
    parts = [
        f"{'.'.join(map(str, p.get('loc', [])))}: {p.get('msg', '')}"
        for p in problems[:3]
        if isinstance(p, dict)
    ]
    return " (" + "; ".join(parts) + ")"


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn expected errors into one line on stderr and an exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            err.print(f"[red]error:[/red] {escape(describe(exc))}", soft_wrap=True)
            for line in listed_devices(exc.details):
                err.print(escape(line), soft_wrap=True)
            raise typer.Exit(2 if isinstance(exc, InputError) else 1) from None

    return wrapper


def client() -> FerryClient:
    """A client from the config file and FERRY_SERVER / FERRY_TOKEN."""
    return FerryClient.from_config(load_config())


# --- argument parsing -------------------------------------------------------------------

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REF = re.compile(rf"^({_NAME})/({_NAME})(?:@([A-Za-z0-9._-]+))?$")


def parse_ref(text: str) -> tuple[str, str, str | None]:
    """``NS/MODEL[@REF]`` → (namespace, model, ref or None)."""
    match = _REF.match(text)
    if not match:
        raise InputError(
            f"{text!r} is not NS/MODEL or NS/MODEL@REF (e.g. vision/resnet@3 or "
            f"vision/resnet@champion)"
        )
    ns, model, ref = match.groups()
    return ns, model, ref


def parse_version_ref(text: str) -> tuple[str, str, int | str]:
    """``NS/MODEL@REF`` with the REF required; a number becomes an int."""
    ns, model, ref = parse_ref(text)
    if ref is None:
        raise InputError(f"{text!r} names no version; add @VERSION or @ALIAS, e.g. {text}@3")
    return ns, model, as_ref(ref)


def as_ref(ref: str) -> int | str:
    return int(ref) if ref.isdigit() else ref


def parse_value(raw: str) -> Any:
    """A ``--param`` value: JSON scalar when it parses as one (0.001, 3, true), else text."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, (int, float, bool)) or value is None else raw


def parse_pairs(items: Sequence[str], option: str, *, numeric: bool) -> dict[str, Any]:
    """Repeated ``NAME=VALUE`` options; numeric ones must be finite numbers."""
    result: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip() or not raw.strip():
            raise InputError(
                f"malformed {option} {item!r}: expected NAME=VALUE, e.g. {option} accuracy=0.93"
            )
        value = parse_value(raw.strip())
        if numeric and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise InputError(f"malformed {option} {item!r}: {raw!r} is not a number")
        result[name.strip()] = value
    return result


# --- output -----------------------------------------------------------------------------


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no markup), for scripts."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


WIDE = 120  # narrower terminals drop a table's ``optional`` columns


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    title: str | None = None,
    optional: Iterable[str] = (),
) -> None:
    """A table that never cuts a value: on a terminal narrower than `WIDE` the
    ``optional`` (low-value) columns are left out, and what still does not fit wraps."""
    dropped = set() if out.width >= WIDE else set(optional)
    keep = [i for i, name in enumerate(columns) if name not in dropped]
    grid = Table(title=title, show_edge=False, header_style="bold")
    for i in keep:
        grid.add_column(columns[i], overflow="fold")
    for row in rows:
        grid.add_row(*("" if row[i] is None else escape(str(row[i])) for i in keep))
    out.print(grid)


def fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """Key/value lines for a `show` command: keys right-aligned to the longest shown, and a
    long value wraps under itself, never under the keys (a digest keeps its column)."""
    shown = [
        (key, json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value)
        for key, value in pairs
        if value not in (None, "", [], {})
    ]
    width = max((len(key) for key, _ in shown), default=0)
    room = max(out.width - width - 2, 20)
    for key, value in shown:
        lines = [
            piece
            for line in str(value).splitlines() or [""]
            for piece in textwrap.wrap(line, room, break_on_hyphens=False) or [""]
        ]
        out.print(f"[bold]{key:>{width}}[/bold]  {escape(lines[0])}", soft_wrap=True)
        for line in lines[1:]:
            out.print(" " * (width + 2) + escape(line), soft_wrap=True)


@contextmanager
def transfer_bar(verb: str, enabled: bool = True) -> Iterator[Callable[[TransferProgress], None]]:
    """A rich progress bar on stderr, one row per file, fed by SDK progress events."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not enabled,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def on_progress(event: TransferProgress) -> None:
        if event.name not in tasks:
            label = f"{verb} {event.name}" + (" (already there)" if event.skipped else "")
            tasks[event.name] = progress.add_task(escape(label), total=event.total)
        progress.update(tasks[event.name], completed=event.done, total=event.total)

    with progress:
        yield on_progress
