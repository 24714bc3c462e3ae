"""`Periodic`: failures never end a loop; the final step writes out what is buffered."""

from __future__ import annotations

import asyncio

from ferry.server.core.periodic import Periodic


def test_a_failing_step_is_retried_and_the_final_step_runs_once_stopped() -> None:
    calls: list[str] = []
    errors: list[int] = []
    at_stop: list[int] = []

    def step() -> None:
        calls.append("step")
        if len(calls) == 1:
            raise RuntimeError("database hiccup")

    async def scenario() -> None:
        loop = Periodic(step, 0.01, "test step", on_error=lambda: errors.append(1), final_step=True)
        task = asyncio.create_task(loop.run())
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        at_stop.append(len(calls))
        loop.stop()
        await task

    asyncio.run(scenario())
    assert errors == [1]  # only the first call failed; the loop went on
    assert len(calls) == at_stop[0] + 1  # exactly one final step after stop()
