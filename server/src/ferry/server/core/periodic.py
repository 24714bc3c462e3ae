"""`Periodic`: the server's background loops (lifespan tasks) in one shape.

Each runs a blocking step on a worker thread (steps talk to the database), then
waits ``interval_s`` or until stopped. A failing step is logged and retried on
the next turn: a database hiccup must never end a loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import anyio

log = logging.getLogger("ferry.server")


class Periodic:
    def __init__(
        self,
        step: Callable[[], object],
        interval_s: float,
        what: str,
        *,
        on_error: Callable[[], object] | None = None,
        final_step: bool = False,
    ) -> None:
        """``on_error`` runs after a failed step; ``final_step`` runs the step once more when
        stopped (to write out what is still buffered)."""
        self.step = step
        self.interval_s = interval_s
        self.what = what
        self.on_error = on_error
        self.final_step = final_step
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            await self._once()
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
            except TimeoutError:
                pass
        if self.final_step:
            await self._once()

    async def _once(self) -> None:
        try:
            await anyio.to_thread.run_sync(self.step)
        except Exception:
            log.exception("%s failed; retrying in %g s", self.what, self.interval_s)
            if self.on_error is not None:
                self.on_error()

    def stop(self) -> None:
        self._stop.set()
