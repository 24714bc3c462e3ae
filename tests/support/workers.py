"""The worker processes of a `ferry server --workers N` supervisor, read from /proc."""

from __future__ import annotations

from pathlib import Path


def workers_of(pid: int) -> set[int]:
    """The supervisor's live worker processes: its children started by ``multiprocessing``
    (uvicorn spawns them), not multiprocessing's resource tracker."""
    workers = set()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:  # exited since the listing
            continue
        if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
            workers.add(int(child))
    return workers
