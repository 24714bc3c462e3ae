"""Commands that run on the server host: start the server, mint tokens, rotate keys,
verify the audit chain. They talk to the data directory and database directly.

``ferry.cli.main`` merges `app` into the ``ferry`` command; ``python -m
ferry.cli.server_cmds`` runs the same commands without the client part.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer

from ferry.protocol.documents import Role
from ferry.server.core.settings import Settings

app = typer.Typer(
    help="Server-host commands.", no_args_is_help=True, pretty_exceptions_enable=False
)
admin_app = typer.Typer(help="Administer tokens directly on the server host.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage the signing keys and the keyring.", no_args_is_help=True)
audit_app = typer.Typer(help="Check the audit log on the server host.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", envvar="FERRY_DATA_DIR", help="Server data directory (default: ./data)."
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="FERRY_DATABASE_URL",
        help="SQLAlchemy URL (default: sqlite:///<data-dir>/ferry.db).",
    ),
]


def _settings(data_dir: Path | None, database_url: str | None, **extra: object) -> Settings:
    return Settings.from_env().with_overrides(data_dir=data_dir, database_url=database_url, **extra)


class StartupError(Exception):
    """The server cannot start; the message says why and what to do (one line)."""


def serve(
    data_dir: Path | None = None,
    host: str | None = None,
    port: int | None = None,
    database_url: str | None = None,
    workers: int = 1,
) -> None:
    """Check what a start needs, migrate, create keys and the first admin token if
    needed, then run uvicorn; print where it listens once HTTP is bound.

    With ``workers`` > 1 this process prepares the data directory once, binds the
    port, prints the banner once and supervises uvicorn worker processes, each
    building the app from the environment set here (docs/deploy.md)."""
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from ferry.server.app import create_app

    os.environ.setdefault("FERRY_MQTT_ENABLED", "true")  # embedded broker unless told otherwise
    try:
        settings = _settings(data_dir, database_url, host=host, port=port, workers=workers)
    except (ValueError, TypeError) as exc:  # SettingsError names the FERRY_* variable
        raise StartupError(
            f"bad configuration: {exc} — fix it or unset it "
            "(docs/server.md lists the FERRY_* settings)"
        ) from None
    if settings.workers < 1:
        raise StartupError(f"--workers {settings.workers}: give at least 1")
    if settings.workers > 1 and settings.database_url.startswith("sqlite"):
        raise StartupError(
            f"--workers {settings.workers} needs PostgreSQL (SQLite takes writes from one "
            "process at a time): set --database-url / FERRY_DATABASE_URL to a postgresql+psycopg:// "
            "URL, or run one worker"
        )
    mqtt_off = ""
    if settings.mqtt.embedded:
        try:
            check_port(settings.mqtt.host, settings.mqtt.port, "FERRY_MQTT_PORT")
        except StartupError as exc:  # HTTP alone still works: devices poll
            mqtt_off = str(exc)
            settings = dataclasses.replace(
                settings, mqtt=settings.mqtt.with_overrides(enabled=False)
            )
    check_data_dir(settings.data_dir)
    check_port(settings.host, settings.port, "--port / FERRY_PORT")
    if settings.workers > 1:
        serve_workers(settings, mqtt_off)
        return
    try:
        application = create_app(settings)
    except SQLAlchemyError as exc:
        raise StartupError(_database_error(settings, exc)) from None
    config = uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    announcing_server(config, lambda: banner(settings, application, mqtt_off)).run()


def _database_error(settings: Settings, exc: Exception) -> str:
    return (
        f"cannot use the database {redact(settings.database_url)}: "
        f"{_first_line(exc)} — start it, or fix --database-url / "
        "FERRY_DATABASE_URL"
    )


WORKER_APP = "ferry.server.app:create_app"  # uvicorn's factory: settings from FERRY_* variables


def serve_workers(settings: Settings, mqtt_off: str) -> None:
    """uvicorn's supervisor over ``settings.workers`` processes on one socket.

    The supervisor restarts a worker that dies; SIGTERM or Ctrl-C stops them all
    (each finishes its requests and its lifespan). Leases decide which worker runs
    what must run once (`ferry.server.wiring`). Metrics are shared through
    prometheus_client's multiprocess directory, so ``/metrics`` sums every worker.
    """
    import tempfile

    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError
    from uvicorn.supervisors import Multiprocess

    from ferry.server.app import prepare
    from ferry.server.core.observability import MULTIPROC_ENV

    try:
        prepare(settings).dispose()  # migrations, keys, the admin token: once, here
    except SQLAlchemyError as exc:
        raise StartupError(_database_error(settings, exc)) from None
    own_metrics_dir = not os.environ.get(MULTIPROC_ENV)
    metrics_dir = (
        tempfile.mkdtemp(prefix="ferry-metrics-") if own_metrics_dir else os.environ[MULTIPROC_ENV]
    )
    for stale in Path(metrics_dir).glob("*.db"):  # counters restart with the server
        stale.unlink()
    os.environ.update(
        {
            MULTIPROC_ENV: metrics_dir,
            "FERRY_DATA_DIR": str(settings.data_dir),
            "FERRY_DATABASE_URL": settings.database_url,
            "FERRY_HOST": settings.host,
            "FERRY_PORT": str(settings.port),
            "FERRY_PUBLIC_URL": settings.public_url,
            "FERRY_WORKERS": str(settings.workers),
            "FERRY_MQTT_ENABLED": "true" if settings.mqtt.enabled else "false",
            "FERRY_PRINT_ADMIN_TOKEN": "false",
        }
    )
    config = uvicorn.Config(
        WORKER_APP,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    sock = config.bind_socket()
    sock.listen(config.backlog)  # connections wait in the backlog while the workers start
    print(banner_text(settings, _worker_mqtt(settings), mqtt_off), file=sys.stderr, flush=True)
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
        if own_metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _worker_mqtt(settings: Settings) -> str:
    if not settings.mqtt.enabled:
        return ""
    return f"{settings.mqtt.device_url} (one worker at a time holds the broker session)"


def announcing_server(config: Any, text: Callable[[], str]) -> Any:
    """uvicorn's server, printing ``text()`` once the HTTP socket is bound — never before,
    so a failed bind is not followed by a claim that the server runs."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                print(text(), file=sys.stderr, flush=True)

    return Server(config)


def banner(settings: Settings, application: Any, mqtt_off: str = "") -> str:
    """Where the server listens (HTTP, MQTT), keeps its data, and its admin token."""
    from ferry.server.fleet.runtime import runtime_of

    return banner_text(settings, runtime_of(application).broker_url, mqtt_off)


def banner_text(settings: Settings, mqtt: str, mqtt_off: str = "") -> str:
    url = f"http://{settings.host}:{settings.port}"
    why = mqtt_off or "see the log above; FERRY_MQTT_PORT / FERRY_MQTT_URL"
    workers = f", {settings.workers} worker processes" if settings.workers > 1 else ""
    return "\n".join(
        [
            f"ferry server: HTTP on {url}{workers} (API {url}/api/v1, health {url}/healthz)",
            f"  MQTT: {mqtt}" if mqtt else f"  MQTT: off, devices poll over HTTP ({why})",
            f"  data: {settings.data_dir} (database {redact(settings.database_url)})",
            f"  admin token: {settings.admin_token_path}"
            + ("" if settings.admin_token_path.exists() else " (not kept: see the first start)"),
        ]
    )


def check_data_dir(path: Path) -> None:
    """The data directory exists (or can be made) and takes a file."""
    probe = path / f".ferry-write-check-{uuid.uuid4().hex}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(
            f"cannot write the data directory {path} ({exc.strerror}) — choose "
            "another with --data-dir / FERRY_DATA_DIR, or fix its "
            "permissions"
        ) from None


def check_port(host: str, port: int, option: str) -> None:
    """Nothing listens on (host, port) yet — checked before anything starts, so a taken
    port is one line, not a half-started server."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            why = (
                "is already in use (another ferry server?)"
                if exc.errno == errno.EADDRINUSE
                else f"cannot be used ({exc.strerror})"
            )
            raise StartupError(
                f"port {port} on {host} {why} — stop what holds it or choose another with {option}"
            ) from None


def redact(url: str) -> str:
    """A database URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@app.command(
    "server",
    epilog="Examples: ferry server --data-dir /var/lib/ferry --port 8080 · "
    "ferry server --workers 4 --database-url postgresql+psycopg://ferry@db/ferry",
)
def server_command(
    data_dir: DataDir = None,
    host: Annotated[
        str | None, typer.Option(envvar="FERRY_HOST", help="Listen address (default: 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(envvar="FERRY_PORT", help="Listen port (default: 8080).")
    ] = None,
    database_url: DatabaseUrl = None,
    workers: Annotated[
        int,
        typer.Option(
            envvar="FERRY_WORKERS",
            help="Worker processes on one port (default: 1; more than 1 needs PostgreSQL).",
        ),
    ] = 1,
) -> None:
    """Run the registry server (SQLite and blobs under the data directory by default).

    Prints where it listens (HTTP, MQTT), its data directory and admin-token file on
    every start; a start that cannot work is one line saying why and what to do.
    """
    try:
        serve(data_dir, host, port, database_url, workers)
    except StartupError as exc:
        typer.echo(f"ferry server: {exc}", err=True)
        raise typer.Exit(1) from None


@admin_app.command(
    "create-token",
    epilog="Example: ferry admin create-token --role publisher "
    "--namespace vision --name ci-pipeline",
)
def create_token_command(
    role: Annotated[str, typer.Option(help="admin, publisher, approver, operator or viewer")],
    name: Annotated[str, typer.Option(help="A name for the token (shown in the audit log).")],
    namespace: Annotated[
        list[str] | None,
        typer.Option(help="Namespace the token may act in; repeat for several (default: * = all)."),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API token and print it once."""
    from ferry.server.audit import service as audit
    from ferry.server.auth.service import ServerRole, create_token
    from ferry.server.core.db import make_engine, migrate, session_scope

    allowed = [r.value for r in ServerRole if r is not ServerRole.DEVICE]
    if role not in allowed:
        raise typer.BadParameter(f"role must be one of {', '.join(allowed)}", param_hint="--role")
    settings = _settings(data_dir, database_url)
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    with session_scope(engine) as session:
        audit.ensure_head(session)
        row, secret = create_token(
            session, name=name, role=ServerRole(role), namespaces=namespace or ["*"]
        )
        audit.append(
            session,
            actor="server-cli",
            action="token.create",
            target=f"token:{row.id}",
            details={"name": name, "role": role, "namespaces": row.namespaces},
        )
    engine.dispose()
    typer.echo(secret)


@keys_app.command("rotate", epilog="Example: ferry keys rotate --role bundles")
def rotate_command(
    role: Annotated[Role, typer.Option(help="Which key to replace.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    expiry_days: Annotated[
        int | None, typer.Option(help="Keyring lifetime (default: 365).")
    ] = None,
) -> None:
    """Replace one key and publish a new keyring version signed by the root
    (by the old and the new root when the root itself rotates)."""
    from ferry.server.audit import service as audit
    from ferry.server.core.db import make_engine, migrate, session_scope
    from ferry.server.trust import service as trust

    settings = _settings(data_dir, database_url, keyring_expiry_days=expiry_days)
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    with session_scope(engine) as session:
        trust.ensure_keyring(session, settings.key_dir, settings.keyring_expiry_days)
        audit.ensure_head(session)
        version = trust.rotate(session, settings.key_dir, role, settings.keyring_expiry_days)
        audit.append(
            session,
            actor="server-cli",
            action="keys.rotate",
            target=f"keyring:{version}",
            details={"role": role.value},
        )
    engine.dispose()
    typer.echo(f"keyring version {version}: new {role.value} key")


@audit_app.command("verify", epilog="Example: ferry audit verify --data-dir ./data")
def audit_verify_command(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Recompute the audit hash chain; exit 1 and name the first bad entry if it is broken."""
    from ferry.server.audit.service import verify_chain
    from ferry.server.core.db import make_engine, migrate

    settings = _settings(data_dir, database_url)
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    from sqlmodel import Session

    with Session(engine) as session:
        report = verify_chain(session)
    engine.dispose()
    if report.ok:
        typer.echo(f"audit chain ok: {report.entries} entries")
        return
    typer.echo(f"audit chain BROKEN at entry {report.first_bad_id}: {report.reason}", err=True)
    raise typer.Exit(1)


@admin_app.command(
    "backup", epilog="Example: ferry admin backup /backups/ferry-2026-12-03 --data-dir ./data"
)
def backup_command(
    folder: Annotated[Path, typer.Argument(help="A new, empty folder for the backup.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Back up database, blobs and keys (safe while the server runs; docs/deploy.md)."""
    from ferry.server.backup import backup

    _backup_step(backup, "backed up", "to", folder, data_dir, database_url)


@admin_app.command(
    "restore", epilog="Example: ferry admin restore /backups/ferry-2026-12-03 --data-dir ./data"
)
def restore_command(
    folder: Annotated[Path, typer.Argument(help="A folder written by `ferry admin backup`.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Replace database, blobs and keys with a backup (stop the server first)."""
    from ferry.server.backup import restore

    _backup_step(restore, "restored", "from", folder, data_dir, database_url)


def _backup_step(
    step: Callable[[Settings, Path], Any],
    did: str,
    where: str,
    folder: Path,
    data_dir: Path | None,
    database_url: str | None,
) -> None:
    """Run a backup or restore and say what it moved, or one line of what went wrong."""
    from ferry.server.backup import BackupError

    try:
        done = step(_settings(data_dir, database_url), folder)
    except BackupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"{did} the {done.database} database, {done.blobs} blob files and "
        f"{done.keys} key files {where} {done.folder}"
    )


if __name__ == "__main__":
    app()
