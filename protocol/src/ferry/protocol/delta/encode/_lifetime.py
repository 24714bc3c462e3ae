"""Delta-build workers that exit when the server dies, even by ``kill -9``.

A SIGKILLed server runs no ``atexit`` hook and never shuts its process pool down:
its idle workers (and, through their open pipe, the multiprocessing resource
tracker) would live on, ~63 MB each. Every worker therefore ties its life to
the server's, twice:

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker the
  moment its parent dies. The kernel ties this to the *thread* that spawned the
  worker, so it is asked for only when the pool is fed from the main thread (the
  server's event loop); a worker spawned from a short-lived thread would be
  killed with that thread;
- everywhere, a daemon thread that polls ``os.getppid()``: once the parent is
  gone the worker is re-parented, and it exits. (A build that holds the GIL in C
  delays this until the build's next Python step.)

The resource tracker needs nothing of its own: it exits when the last process
holding its pipe (the server and its workers) is gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 0.5


def exit_with_parent(parent_pid: int, death_signal: bool) -> None:
    """Process-pool initializer: end this worker when ``parent_pid`` ends."""
    if death_signal and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    watcher = threading.Thread(target=_watch, args=(parent_pid,), name="ferry-parent", daemon=True)
    watcher.start()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    os._exit(1)  # no cleanup to run: a build writes temp files renamed into place


def lifetime_args() -> tuple[int, bool]:
    """``initargs`` for :func:`exit_with_parent`, computed in the server process."""
    return os.getpid(), threading.current_thread() is threading.main_thread()
