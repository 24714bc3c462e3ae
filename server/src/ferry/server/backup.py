"""Back up and restore a server: database, blobs and keys, in an order that stays consistent.

The database is dumped *first* and the blobs copied *after*: blobs are immutable
and content-addressed, and a version is registered only once its blobs are
stored, so every blob the dump references is already on disk when the copy
starts (blobs uploaded meanwhile are harmless extras). The keys are copied with
their modes; in production the root key is not on the server at all (docs/deploy.md).

SQLite is copied with SQLite's online backup API (consistent while the server
runs); PostgreSQL with ``pg_dump --format=custom`` and restored with
``pg_restore --clean --if-exists``, so both need only the standard tools.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from ferry.protocol.timefmt import format_time, utcnow
from ferry.server.core.settings import Settings

MANIFEST = "ferry-backup.json"
FORMAT = 1


class BackupError(Exception):
    """A backup or restore could not be made; the message says what to do."""

    code = "backup_failed"


@dataclass(frozen=True)
class BackupSummary:
    folder: Path
    database: str
    blobs: int
    keys: int


def backup(settings: Settings, folder: Path) -> BackupSummary:
    """Write database, blobs and keys of ``settings`` into the new folder ``folder``."""
    if folder.exists() and any(folder.iterdir()):
        raise BackupError(f"{folder} is not empty: back up into a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    kind = _dump_database(settings.database_url, folder)
    blobs = _copy_tree(settings.blob_dir, folder / "blobs")
    keys = _copy_tree(settings.key_dir, folder / "keys")
    (folder / MANIFEST).write_text(
        json.dumps(
            {
                "format": FORMAT,
                "database": kind,
                "created_at": format_time(utcnow()),
                "blobs": blobs,
                "keys": keys,
            },
            indent=1,
        )
        + "\n"
    )
    return BackupSummary(folder, kind, blobs, keys)


def restore(settings: Settings, folder: Path) -> BackupSummary:
    """Put a backup back under ``settings`` (stop the server first; its data is replaced)."""
    try:
        meta = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{folder} holds no readable {MANIFEST}: is it a ferry backup?") from exc
    if meta.get("format") != FORMAT:
        raise BackupError(f"backup format {meta.get('format')!r} is not {FORMAT}")
    kind = _kind(settings.database_url)
    if meta["database"] != kind:
        raise BackupError(
            f"the backup holds a {meta['database']} database but the server "
            f"uses {kind}: restore onto the same kind"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _load_database(settings.database_url, folder)
    for name, target in (("blobs", settings.blob_dir), ("keys", settings.key_dir)):
        shutil.rmtree(target, ignore_errors=True)
        if (folder / name).exists():
            shutil.copytree(folder / name, target)
    return BackupSummary(folder, kind, int(meta["blobs"]), int(meta["keys"]))


def _kind(database_url: str) -> str:
    backend = make_url(database_url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise BackupError(f"backups support SQLite and PostgreSQL, not {backend}")
    return backend


def _sqlite_path(database_url: str) -> Path:
    return Path(make_url(database_url).database or "")


def _libpq_url(database_url: str) -> str:
    """The URL pg_dump understands (no SQLAlchemy driver suffix)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _dump_database(database_url: str, folder: Path) -> str:
    kind = _kind(database_url)
    if kind == "sqlite":
        source = sqlite3.connect(_sqlite_path(database_url))
        target = sqlite3.connect(folder / "ferry.db")
        with target:
            source.backup(target)
        source.close()
        target.close()
    else:
        _run(
            [
                "pg_dump",
                "--format=custom",
                "--no-owner",
                f"--file={folder / 'ferry.pgdump'}",
                _libpq_url(database_url),
            ],
            "pg_dump",
        )
    return kind


def _load_database(database_url: str, folder: Path) -> None:
    if _kind(database_url) == "sqlite":
        path = _sqlite_path(database_url)
        for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)
        shutil.copy2(folder / "ferry.db", path)
    else:
        _run(
            [
                "pg_restore",
                "--clean",
                "--if-exists",
                "--no-owner",
                f"--dbname={_libpq_url(database_url)}",
                str(folder / "ferry.pgdump"),
            ],
            "pg_restore",
        )


def _copy_tree(source: Path, target: Path) -> int:
    if not source.exists():
        return 0
    shutil.copytree(source, target)
    return sum(1 for p in target.rglob("*") if p.is_file())


def _run(command: list[str], tool: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=3600)
    except FileNotFoundError as exc:
        raise BackupError(f"{tool} is not installed: apt-get install postgresql-client") from exc
    if done.returncode != 0:
        raise BackupError(f"{tool} failed: {done.stderr.strip()[-500:]}")
