"""Randomised kill -9 of the real agent over every step of bundle and delta installs.

Each trial installs v1 and v2, targets v3 (a full bundle, or a delta for its
model file), and SIGKILLs ``ferry-agent run`` several times: at named crash
points, in the order an install passes them (every state, every
``<state>.persisted`` window and every point inside a step, each at a random
pass), and in half of the trials once more at a random moment. Then it restarts
the agent and checks the story ends well:

- after every kill the slot runs v2 or v3, each file matching its signed manifest;
- in the end it runs v3, every installed version folder is complete, nothing is
  left in staging, no temp file is left anywhere;
- the server got exactly one terminal report for the update.

The seed is fixed (``FERRY_SOAK_SEED``, default 1414), so a failure replays. The
normal run has a few trials; ``FERRY_SOAK_TRIALS=200 make soak`` runs more.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any

import bsdiff4
import pytest

from ferry.agent.crashpoints import HALT_ENV, HIT_ENV, POINTS
from ferry.protocol.documents import AgentState
from ferry.protocol.verify import verify_file
from tests.agent.conftest import Device
from tests.agent.test_crash import PASSING_PROBE, slot_record
from tests.support.device_repository import DeviceRepository

SEED = int(os.environ.get("FERRY_SOAK_SEED", "1414"))
TRIALS = int(os.environ.get("FERRY_SOAK_TRIALS", "8"))
# Every crash point, in the order an install passes them (write.temp: anywhere).
FLOW = (
    "downloading.persisted", "downloading", "download.chunk", "delta.applied",
    "download.complete", "verifying.persisted", "verifying", "staged.persisted", "staged",
    "stage.moved", "switching.persisted", "switching", "switch.previous", "probing.persisted",
    "probing", "committed.persisted", "committed", "remove.manifest", "write.temp",
)  # fmt: skip
STRIDE = 7  # trial i kills at FLOW[i], FLOW[i + 7], …: 7 trials pass every point
TERMINAL = {s.value for s in (AgentState.COMMITTED, AgentState.ROLLED_BACK, AgentState.FAILED)}
CONFIG = PASSING_PROBE + "[install]\nchunk_bytes = 16384\n"

OLD_MODEL = bytes(range(256)) * 1200  # 300 KiB
NEW_MODEL = OLD_MODEL[:100_000] + b"fine-tuned" * 50 + OLD_MODEL[100_500:]


@dataclass(frozen=True)
class Kill:
    """SIGKILL at the ``hit``-th pass of ``point``, or ``delay_s`` after the start."""

    point: str | None
    hit: int = 1
    delay_s: float = 0.0

    def env(self) -> dict[str, str]:
        return {HALT_ENV: self.point, HIT_ENV: str(self.hit)} if self.point else {}


@dataclass(frozen=True)
class Trial:
    delta: bool
    kills: tuple[Kill, ...]


def plan(trial: int) -> Trial:
    """The same trial for the same seed and index, whatever else runs.

    Named points are visited in flow order (a later restart resumes past the
    earlier ones), each at a random pass; half of the trials also start with a
    kill at a random moment.
    """
    rng = random.Random(SEED * 100_003 + trial)
    points = FLOW[trial % STRIDE :: STRIDE]
    kills = [Kill(point, hit=_random_hit(rng, point)) for point in points]
    if rng.random() < 0.5:  # after the named kills (each must be reached), a random moment
        kills.append(Kill(None, delay_s=rng.uniform(0.2, 1.2)))
    delta = "delta.applied" in points or rng.random() < 0.5
    return Trial(delta=delta, kills=tuple(kills))


def _random_hit(rng: random.Random, point: str) -> int:
    """Which pass of the point dies: a state is entered once per process, the rest repeat."""
    if point == "write.temp":
        return rng.randint(1, 4)
    return rng.randint(1, 3) if point == "download.chunk" else 1


def files(version: int) -> dict[str, bytes]:
    model = {1: OLD_MODEL[::-1], 2: OLD_MODEL, 3: NEW_MODEL}[version]
    config = bytes([version]) * 60_000  # downloaded whole even in a delta install: 4 chunks
    return {"model.onnx": model, "config.json": config}


def assert_runs_complete(device: Device, versions: tuple[int, ...]) -> int:
    """The slot runs one of ``versions`` and every installed version is complete."""
    slot = device.slot()
    current = slot.current()
    assert current is not None, "the slot lost its model"
    assert current.manifest.version in versions, current.manifest.version
    for folder in slot.versions.iterdir():
        installed = slot.installed(folder.name) if folder.is_dir() else None
        if installed is None:
            continue  # a manifest file, or a folder not (yet, or any more) installed
        for entry in installed.manifest.files:
            verify_file(installed.path / entry.path, entry.size, entry.sha256)
    return current.manifest.version


def settled(device: Device) -> bool:
    record = slot_record(device)
    return record.get("state") == "idle" and (record.get("last") or {}).get("to_version") == 3


def run_until_killed(device: Device, kill: Kill, timeout: float = 60) -> None:
    """Start the agent and kill it: it dies at its named point, or at ``delay_s``."""
    process = device.start(env=kill.env())
    started = time.monotonic()
    while process.poll() is None:
        if settled(device):
            device.kill()
            assert kill.point is None, f"{kill} was never reached: the update finished"
        if kill.point is None and time.monotonic() - started >= kill.delay_s:
            device.kill()
        assert time.monotonic() - started < timeout, device.log()[-3000:]
        time.sleep(0.02)
    assert process.returncode == -9, device.log()[-3000:]


def terminal_ids(device: Device, repo: DeviceRepository) -> set[str]:
    """Terminal reports of the v3 update: received by the server, or still queued."""
    queued = [report for _, report in device.agent.reports.pending(10_000)]
    return {
        r["report_id"]
        for r in [*repo.reports_for("main"), *queued]
        if r["state"] in TERMINAL and r.get("to_version") == 3 and r["slot"] == "main"
    }


def leftovers(device: Device) -> list[str]:
    roots = (device.config.models_dir, device.config.state_dir)
    return [str(p) for root in roots for p in root.rglob("*") if p.name.endswith((".tmp", "part"))]


def test_the_trials_visit_every_crash_point() -> None:
    steps = ("downloading", "verifying", "staged", "switching", "probing", "committed")
    assert set(FLOW) == {*POINTS, *steps, *(f"{step}.persisted" for step in steps)}
    assert {k.point for t in range(STRIDE) for k in plan(t).kills} >= set(FLOW)


@pytest.mark.parametrize("trial", range(TRIALS), ids=lambda t: f"trial{t}")
def test_random_kills_end_committed_with_one_terminal_report(
    trial: int, make_device: Any, repo: DeviceRepository
) -> None:
    case = plan(trial)
    device: Device = make_device(CONFIG)
    for version in (1, 2):
        repo.target({"main": repo.add_bundle(files(version), version=version)})
        device.sync()
    if case.delta:
        repo.add_delta(OLD_MODEL, NEW_MODEL, bsdiff4.diff(OLD_MODEL, NEW_MODEL))
    repo.target({"main": repo.add_bundle(files(3), version=3)})

    for kill in case.kills:
        run_until_killed(device, kill)
        assert_runs_complete(device, (2, 3))

    device.start()
    repo.wait_for(lambda: settled(device), timeout=60, what=f"trial {case} to settle")
    repo.wait_for(lambda: bool(terminal_ids(device, repo)), what="the terminal report")
    device.stop()
    assert slot_record(device)["last"]["state"] == "committed", case
    assert assert_runs_complete(device, (3,)) == 3
    assert not any(device.slot().staging_root.iterdir()), "staging must be empty"
    assert leftovers(device) == []
    assert len(terminal_ids(device, repo)) == 1, (case, repo.states())
