"""Crash-safe files: temp file in the same folder, fsync, ``os.replace``, fsync the folder.

After a power cut a file written here is either the old content or the new one,
never a mix, and the rename itself survives (hence the folder fsync).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ferry.agent.crashpoints import crashpoint

TEMP_GLOB = ".*.tmp"  # what write_atomic and replace_symlink leave behind when killed


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (a file written by someone else, e.g. a download)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    crashpoint("write.temp")
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Path, value: Any, mode: int = 0o644) -> None:
    """Atomically write ``value`` as JSON (readable by people debugging a device)."""
    write_atomic(path, json.dumps(value, sort_keys=True, indent=1).encode("utf-8") + b"\n", mode)


def read_json(path: Path) -> Any | None:
    """The JSON stored at ``path``, or None when there is none yet."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def replace_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` with one atomic rename, then make it durable."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def remove_temps(folder: Path) -> list[str]:
    """Delete the temp files a kill left in ``folder`` (never a complete file: not renamed).

    Only for a folder nobody writes to at the same time (the agent lock is held).
    """
    removed = []
    for leftover in folder.glob(TEMP_GLOB) if folder.is_dir() else ():
        if leftover.is_symlink() or not leftover.is_dir():
            leftover.unlink(missing_ok=True)
            removed.append(leftover.name)
    return removed
