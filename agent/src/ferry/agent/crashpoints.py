"""Test hook: SIGKILL the agent at a named point, to prove crash recovery for real.

``FERRY_AGENT_TEST_HALT_AT=<point>`` kills the process with SIGKILL (a power cut:
no ``finally``, no flush) the ``FERRY_AGENT_TEST_HALT_HIT``-th time (default: the
first) the code passes ``<point>``. Points are the state names (right after the
state was persisted and its report queued), ``<state>.persisted`` (persisted,
report not yet queued) and the names in :data:`POINTS`. Without the variable a
crash point is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

HALT_ENV = "FERRY_AGENT_TEST_HALT_AT"
HIT_ENV = "FERRY_AGENT_TEST_HALT_HIT"

# Points inside steps, where a kill leaves the most interesting leftovers.
POINTS = (
    "download.chunk",  # a chunk of a file is in its .part file (fsynced or not)
    "download.complete",  # the last byte is in <file>.part, not yet renamed
    "delta.applied",  # a file rebuilt from a delta is written, not yet verified
    "stage.moved",  # the staging folder is in versions/, its manifest not yet written
    "switch.previous",  # ``previous`` moved, ``current`` not yet
    "remove.manifest",  # a version's manifest is gone, its folder not yet (prune/remove)
    "write.temp",  # an atomic write's temp file is complete, not yet renamed
)

_hits: dict[str, int] = {}


def crashpoint(name: str) -> None:
    """Die here with SIGKILL when the test hook asks for ``name`` (and its hit count is due)."""
    if os.environ.get(HALT_ENV) != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(os.environ.get(HIT_ENV, "1")):
        os.kill(os.getpid(), signal.SIGKILL)
