"""The `ferry` command: registry client commands, plus server-host commands when installed.

Server-host commands (`ferry server`, `ferry admin …`, `ferry keys …`,
`ferry audit verify`) live in ``ferry.cli.server_cmds`` and need the ``server``
extra; without it the client commands still work.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated

import typer

from ferry.cli import (
    account_cmds,
    delta_cmds,
    fleet_cmds,
    inspect_cmds,
    registry_cmds,
    rollout_ops,  # noqa: F401  (adds its commands to `ferry rollout`)
    simulate,
    transfer_cmds,
)

HELP = """Ferry: push, promote and pull signed ML model bundles.

Set up once: ferry configure --server URL --token TOKEN
(or set FERRY_SERVER and FERRY_TOKEN). Guide: docs/cli.md"""

app = typer.Typer(
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"ferry {package_version('ferry')}")
        except PackageNotFoundError:
            typer.echo("ferry (not installed as a package)")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Ferry: push, promote and pull signed ML model bundles."""


def _merge(target: typer.Typer, source: typer.Typer) -> None:
    """Add ``source``'s commands and groups to ``target``; a group both define (e.g.
    `audit`) gets the union of their commands."""
    target.registered_commands.extend(source.registered_commands)
    mine = {g.name: g for g in target.registered_groups}
    for group in source.registered_groups:
        same = mine.get(group.name)
        if same is not None and same.typer_instance and group.typer_instance:
            same.typer_instance.registered_commands.extend(group.typer_instance.registered_commands)
        else:
            target.registered_groups.append(group)


def _server_commands() -> typer.Typer | None:
    """The server engineer's commands, absent when the server extra is not installed."""
    try:
        from ferry.cli import server_cmds
    except ImportError:
        return None
    return server_cmds.app


_merge(app, account_cmds.app)
_merge(app, registry_cmds.app)
_merge(app, transfer_cmds.app)
_merge(app, simulate.app)
_merge(app, inspect_cmds.app)
app.add_typer(registry_cmds.namespace_app, name="namespace")
app.add_typer(registry_cmds.model_app, name="model")
app.add_typer(registry_cmds.alias_app, name="alias")
app.add_typer(registry_cmds.tag_app, name="tag")
app.add_typer(account_cmds.token_app, name="token")
app.add_typer(account_cmds.audit_app, name="audit")
app.add_typer(fleet_cmds.devices_app, name="devices")
app.add_typer(fleet_cmds.token_app, name="enrollment-token")
app.add_typer(fleet_cmds.rollout_app, name="rollout")  # with rollout_ops' commands
app.add_typer(fleet_cmds.status_app, name="status")
app.add_typer(delta_cmds.app, name="delta")
if (server_app := _server_commands()) is not None:
    _merge(app, server_app)
