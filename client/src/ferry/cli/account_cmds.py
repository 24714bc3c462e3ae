"""`ferry configure`, `ferry whoami`, `ferry token …`, `ferry audit list|export`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ferry.cli._common import client, fields, handle_errors, out, print_json, table
from ferry.client import InputError, load_config, save_config

app = typer.Typer()
token_app = typer.Typer(help="Create, list and revoke API tokens (admin).", no_args_is_help=True)
audit_app = typer.Typer(
    help="Read and export the hash-chained audit log (admin).", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ROLES = ("admin", "publisher", "approver", "operator", "viewer")


@app.command(epilog="Example: ferry configure --server https://ferry.example.com --token fry_…")
@handle_errors
def configure(
    server: Annotated[
        str | None, typer.Option(help="Registry URL, e.g. http://localhost:8080.")
    ] = None,
    token: Annotated[str | None, typer.Option(help="API token (fry_…).")] = None,
) -> None:
    """Save the server URL and token to the config file (mode 0600).

    The file is $FERRY_CONFIG, else ~/.config/ferry/config.toml. FERRY_SERVER and
    FERRY_TOKEN, when set, override it at run time.
    """
    config = load_config(use_env=False)
    if server is None and token is None:
        raise InputError("nothing to save; pass --server URL and/or --token TOKEN")
    if server is not None:
        if not server.startswith(("http://", "https://")):
            raise InputError(f"--server {server!r} must start with http:// or https://")
        config.server = server.rstrip("/")
    if token is not None:
        config.token = token
    path = save_config(config)
    out.print(
        f"saved {path} (server {config.server or '-'}, token "
        f"{'set' if config.token else 'not set'})"
    )


@app.command(epilog="Example: ferry whoami --json")
@handle_errors
def whoami(as_json: JsonOpt = False) -> None:
    """Show the token's name, role and namespaces."""
    with client() as ferry:
        me = ferry.whoami()
    if as_json:
        print_json(me.to_json())
        return
    fields(
        [
            ("name", me.name),
            ("role", me.role),
            ("namespaces", ", ".join(me.namespaces)),
            ("server", ferry.base_url),
        ]
    )


@token_app.command(
    "create", epilog="Example: ferry token create ci-vision --role publisher --namespace vision"
)
@handle_errors
def token_create(
    name: Annotated[str, typer.Argument(help="A name for the token, e.g. the pipeline's.")],
    role: Annotated[str, typer.Option(help=f"One of: {', '.join(ROLES)}.")] = "viewer",
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace", "-n", help="Namespace the token may use (repeat); default: all (*)."
        ),
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option(help="RFC 3339 expiry, e.g. 2027-01-01T00:00:00Z.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token; its secret is printed once and never again."""
    with client() as ferry:
        created = ferry.create_token(name, role, namespace or ["*"], expires_at=expires_at)
    if as_json:
        print_json(created.to_json())
        return
    out.print(f"created token {created.id} ({created.role} on {', '.join(created.namespaces)})")
    out.print("secret (shown only now):")
    sys.stdout.write(f"{created.token}\n")


@token_app.command("list", epilog="Example: ferry token list --json")
@handle_errors
def token_list(as_json: JsonOpt = False) -> None:
    """List tokens (never their secrets)."""
    with client() as ferry:
        tokens = ferry.list_tokens()
    if as_json:
        print_json([t.to_json() for t in tokens])
        return
    table(
        ["id", "name", "role", "namespaces", "created", "expires", "revoked"],
        [
            (
                t.id,
                t.name,
                t.role,
                ", ".join(t.namespaces),
                t.created_at,
                t.expires_at,
                t.revoked_at,
            )
            for t in tokens
        ],
    )


@token_app.command("revoke", epilog="Example: ferry token revoke 7")
@handle_errors
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (see `ferry token list`).")],
) -> None:
    """Revoke a token; requests with it fail from now on."""
    with client() as ferry:
        ferry.revoke_token(token_id)
    out.print(f"revoked token {token_id}")


@audit_app.command("list", epilog="Example: ferry audit list --after-id 100 --limit 50")
@handle_errors
def audit_list(
    after_id: Annotated[int | None, typer.Option(help="Only entries after this id.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many entries.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show audit entries: who did what to what, when."""
    with client() as ferry:
        entries = ferry.list_audit(after_id=after_id, limit=limit)
    if as_json:
        print_json([e.to_json() for e in entries])
        return
    table(
        ["id", "at", "actor", "action", "target"],
        [(e.id, e.at, e.actor, e.action, e.target) for e in entries],
    )


@audit_app.command("export", epilog="Example: ferry audit export --output audit.jsonl")
@handle_errors
def audit_export(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write; default stdout.", dir_okay=False),
    ] = None,
) -> None:
    """Export every audit entry as JSON Lines (for archiving or offline checks)."""
    with client() as ferry:
        if output is None:
            ferry.export_audit(sys.stdout.buffer)
            sys.stdout.flush()
            return
        with output.open("wb") as fh:
            written = ferry.export_audit(fh)
    out.print(f"wrote {written} bytes to {output}")
