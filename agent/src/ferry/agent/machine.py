"""The installer state machine of one slot, persisted before every step (Mender-style).

    idle → downloading → verifying → staged → switching → probing → committed
                 │            │          │          │           └──→ rolled_back
                 └────────────┴──────────┴──────────┴──────────────→ failed / rolled_back

One object per state. ``State.enter`` is the only way in: it writes the record
(temp file + fsync + ``os.replace`` + folder fsync), queues the status report and
only then runs the step, so no step can run without its state on disk first.
Every step is idempotent; recovery after a crash is one table lookup
(:data:`RECOVERY`) that never resumes past a step whose input was not verified.
"""

from __future__ import annotations

import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ferry.agent.config import AgentConfig
from ferry.agent.crashpoints import HALT_ENV, crashpoint  # noqa: F401 (tests import HALT_ENV here)
from ferry.agent.download import Downloader
from ferry.agent.errors import (
    AgentError,
    DownloadTimeoutError,
    InstallError,
    RebootLoopError,
    error_code,
    is_transient,
)
from ferry.agent.installer import Slot
from ferry.agent.probe import ProbeTarget, run_probe
from ferry.agent.record import InstallRecord, Update, load_record, save_record
from ferry.agent.reports import ReportQueue
from ferry.protocol.documents import AgentState, BundleManifest, StatusReport
from ferry.protocol.errors import ProtocolError
from ferry.protocol.signing import parse_envelope
from ferry.protocol.timefmt import format_time, utcnow
from ferry.protocol.verify import verify_file

log = logging.getLogger("ferry.agent.machine")

POST_SWITCH = (AgentState.SWITCHING, AgentState.PROBING)
TERMINAL = (AgentState.COMMITTED, AgentState.ROLLED_BACK, AgentState.FAILED)
DETAIL_LIMIT = 4000
REPORT_IDS = uuid.UUID("6f1c5c3e-2b4e-4d0a-9a51-5f0e0c7d2a10")  # uuid5 namespace of report ids


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Services:
    """What the steps need from the agent: config, device id, downloader, report queue."""

    config: AgentConfig
    device_id: str
    downloader: Downloader
    reports: ReportQueue
    on_report: Callable[[], None] | None = None  # wakes the report sender


class SlotMachine:
    """Runs and persists the update of one slot; the record lives in ``<state>/slots/<slot>.json``."""

    def __init__(self, services: Services, slot: Slot) -> None:
        self.services = services
        self.slot = slot
        self.path = slot_record_path(services.config, slot.name)
        self.record: InstallRecord = load_record(self.path, slot.name, slot.all_installed)

    # --- record ---------------------------------------------------------------------

    @property
    def state(self) -> AgentState:
        return self.record.state

    @property
    def update(self) -> Update:
        """The update under way; only meaningful outside ``idle``."""
        if self.record.update is None:
            raise RuntimeError(f"slot {self.slot.name}: no update under way")
        return self.record.update

    @property
    def manifest(self) -> BundleManifest:
        envelope = self.update.manifest
        if envelope is None:
            raise RuntimeError(f"slot {self.slot.name}: the update has no verified manifest")
        return BundleManifest.from_dict(parse_envelope(envelope).signed)

    def installed_digests(self) -> dict[tuple[str, int], str]:
        """(model, version) → manifest digest of every version this slot ever committed.

        The record remembers them after the folders are pruned (and a record migrated
        from schema 1 starts from the versions that were on disk).
        """
        return dict(self.record.installed)

    def remember_installed(self) -> None:
        """Pin the committed version's manifest digest: the same version may never change."""
        manifest = self.manifest
        self.record.installed[(manifest.full_name, manifest.version)] = self.update.digest

    def save(self) -> None:
        save_record(self.path, self.record)

    def persist(self, state: AgentState, resumed: bool) -> None:
        """Write the record for ``state``; the reboot-loop counter grows only on recovery."""
        self.record.state = state
        self.record.resumes = self.record.resumes + 1 if resumed else 0
        self.save()

    def set_error(self, exc: BaseException) -> None:
        self.record.error_code = error_code(exc)
        self.record.detail = str(exc)[:DETAIL_LIMIT]

    def finish(self) -> None:
        """Back to idle, remembering the outcome so the same directive is not retried."""
        self.record.finish()
        self.save()

    # --- reports --------------------------------------------------------------------

    def report_id(self, state: AgentState) -> str:
        """One id per (update, state): the report repeated after a crash is the same report."""
        update = self.record.update or Update(digest="")
        key = [self.services.device_id, self.slot.name, state.value]
        key += [str(v) for v in (update.digest, update.sequence, update.started_ms)]
        return str(uuid.uuid5(REPORT_IDS, "/".join(key)))

    def report(self, state: AgentState, report_id: str | None = None) -> None:
        update = self.record.update or Update(digest="")
        timings = dict(update.timings)
        if state in TERMINAL and update.started_ms is not None:
            timings["total_ms"] = max(_now_ms() - update.started_ms, 0)
        report = StatusReport(
            report_id=report_id or self.report_id(state),
            device_id=self.services.device_id,
            slot=self.slot.name,
            state=state,
            at=format_time(utcnow()),
            from_version=update.from_version,
            to_version=update.to_version,
            error_code=self.record.error_code,
            detail=self.record.detail,
            sequence=update.sequence,
            rollout_id=update.rollout_id,
            bytes_downloaded=update.bytes_downloaded,
            timings=timings,
        )
        self.services.reports.put(report)
        if self.services.on_report is not None:
            self.services.on_report()
        fields: dict[str, Any] = {
            "slot": self.slot.name,
            "state": state.value,
            "to_version": report.to_version,
        }
        if report.error_code:
            fields["error_code"] = report.error_code
        log.info("transition", extra={"fields": fields})

    def report_stall(self, exc: AgentError) -> None:
        """Report a transient error the fleet must see (a stalled download); the state stays."""
        self.set_error(exc)
        self.report(self.state, report_id=str(uuid.uuid4()))  # each stall is news
        self.record.error_code, self.record.detail = None, ""

    def mark_step(self, name: str) -> None:
        """Close the timing of the step that just ended (wall clock: it survives restarts)."""
        update = self.update
        now = _now_ms()
        started = update.step_started_ms if update.step_started_ms is not None else now
        update.timings[f"{name}_ms"] = max(now - started, 0)
        update.step_started_ms = now

    # --- driving --------------------------------------------------------------------

    def start(self, update: Update) -> None:
        """Begin a new update whose manifest was verified; runs until a terminal state."""
        update.step_started_ms = update.started_ms = _now_ms()
        self.record.update, self.record.error_code, self.record.detail = update, None, ""
        self.run(Downloading())

    def refuse(self, update: Update, exc: BaseException) -> None:
        """Record and report an update refused before anything was downloaded."""
        if update.started_ms is None:
            update.started_ms = _now_ms()
        self.record.update = update
        self.set_error(exc)
        self.run(Failed())

    def run(self, state: State | None, resumed: bool = False, announce: bool = True) -> None:
        while state is not None:
            state = state.enter(self, resumed, announce)
            resumed, announce = False, True

    def retry(self) -> None:
        """Carry on after a transient error in this process: same state, no second report."""
        self.run(RECOVERY[self.state](), announce=False)

    def recover(self) -> None:
        """After a restart: finish or undo whatever the saved state says was under way."""
        saved = self.state
        if saved is AgentState.IDLE:
            return
        log.info("recover", extra={"fields": {"slot": self.slot.name, "state": saved.value}})
        if self.record.resumes >= self.services.config.install.max_resumes:
            loop = RebootLoopError(f"restarted {self.record.resumes} times in state {saved.value}")
            self.set_error(loop)
            self.run(RolledBack() if saved in POST_SWITCH else Failed())
            return
        self.run(RECOVERY[saved](), resumed=True)

    def abandon(self) -> None:
        """Drop an unfinished download that the desired state no longer asks for."""
        self.slot.clear_staging()
        self.record.error_code, self.record.detail = "superseded", "the desired state changed"
        self.finish()


class State(ABC):
    """One state of the machine; subclasses implement ``run`` and never persist themselves."""

    name: ClassVar[AgentState]

    def enter(self, machine: SlotMachine, resumed: bool, announce: bool = True) -> State | None:
        """Persist, report, then run: the order that makes crash recovery possible."""
        machine.persist(self.name, resumed)
        crashpoint(f"{self.name.value}.persisted")  # test hook: a power cut right here
        if announce:
            machine.report(self.name)
        crashpoint(self.name.value)
        try:
            return self.run(machine)
        except (AgentError, ProtocolError, OSError) as exc:
            if is_transient(exc):
                raise  # stays in this state; the daemon retries with backoff
            machine.set_error(exc)
            return self.on_error(machine)

    @abstractmethod
    def run(self, machine: SlotMachine) -> State | None:
        """Do this state's work; return the next state, or None when the update is over."""

    def on_error(self, machine: SlotMachine) -> State | None:
        return Failed()


class Downloading(State):
    name = AgentState.DOWNLOADING

    def run(self, machine: SlotMachine) -> State | None:
        update = machine.update

        def progress(count: int) -> None:
            update.bytes_downloaded += count

        try:
            machine.services.downloader.fetch(
                machine.manifest,
                machine.slot.staging(update.digest),
                machine.slot.current(),
                progress,
                update.digest,
            )
        except DownloadTimeoutError as exc:
            machine.report_stall(exc)  # kept: the partial files; resumed: after the backoff
            raise
        finally:
            machine.save()  # keep the byte count across retries
        machine.mark_step("download")
        return Verifying()


class Verifying(State):
    name = AgentState.VERIFYING

    def run(self, machine: SlotMachine) -> State | None:
        staging = machine.slot.staging(machine.update.digest)
        for entry in machine.manifest.files:
            verify_file(staging / entry.path, entry.size, entry.sha256)
        machine.mark_step("verify")
        return Staged()


class Staged(State):
    name = AgentState.STAGED

    def run(self, machine: SlotMachine) -> State | None:
        update = machine.update
        if update.to_name is None or update.manifest is None:
            raise InstallError(f"slot {machine.slot.name}: the update names no version to stage")
        machine.slot.stage(update.digest, update.to_name, update.manifest)
        machine.mark_step("stage")
        return Switching()


class Switching(State):
    name = AgentState.SWITCHING

    def run(self, machine: SlotMachine) -> State | None:
        update = machine.update
        if update.to_name is None:
            raise InstallError(f"slot {machine.slot.name}: the update names no version to switch")
        machine.slot.switch(update.to_name, update.from_name)
        machine.mark_step("switch")
        return Probing()

    def on_error(self, machine: SlotMachine) -> State | None:
        return RolledBack()


class Probing(State):
    name = AgentState.PROBING

    def run(self, machine: SlotMachine) -> State | None:
        to_name = machine.update.to_name
        if to_name is None:
            raise InstallError(f"slot {machine.slot.name}: the update names no version to probe")
        manifest = machine.manifest
        target = ProbeTarget(
            slot=machine.slot.name,
            model=manifest.full_name,
            version=manifest.version,
            model_dir=machine.slot.version_dir(to_name),
            manifest_path=machine.slot.versions / f"{to_name}.manifest.json",
        )
        run_probe(machine.services.config.probe, target)
        machine.mark_step("probe")
        return Committed()

    def on_error(self, machine: SlotMachine) -> State | None:
        return RolledBack()


class Committed(State):
    name = AgentState.COMMITTED

    def run(self, machine: SlotMachine) -> State | None:
        machine.remember_installed()
        machine.slot.clear_staging()
        machine.slot.prune(machine.services.config.install.keep_versions)
        machine.finish()
        return None

    def on_error(self, machine: SlotMachine) -> State | None:
        machine.finish()  # the new version runs; failing to clean up is not worth undoing it
        return None


class RolledBack(State):
    name = AgentState.ROLLED_BACK

    def run(self, machine: SlotMachine) -> State | None:
        update = machine.update
        machine.slot.switch_back(update.from_name)
        if update.to_name and update.to_name != update.from_name:
            machine.slot.remove(update.to_name)
        machine.slot.clear_staging()
        machine.finish()
        return None

    def on_error(self, machine: SlotMachine) -> State | None:
        machine.finish()
        return None


class Failed(State):
    name = AgentState.FAILED

    def run(self, machine: SlotMachine) -> State | None:
        machine.slot.clear_staging()
        machine.finish()
        return None

    def on_error(self, machine: SlotMachine) -> State | None:
        machine.finish()
        return None


# A download or a verification interrupted by a crash starts again from downloading
# (complete files are kept, partial ones resumed) and is verified again in full.
RECOVERY: dict[AgentState, type[State]] = {
    AgentState.DOWNLOADING: Downloading,
    AgentState.VERIFYING: Downloading,
    AgentState.STAGED: Staged,
    AgentState.SWITCHING: Switching,
    AgentState.PROBING: Probing,
    AgentState.COMMITTED: Committed,
    AgentState.ROLLED_BACK: RolledBack,
    AgentState.FAILED: Failed,
}


def slot_record_path(config: AgentConfig, slot: str) -> Path:
    return config.state_dir / "slots" / f"{slot}.json"


def slot_names(config: AgentConfig) -> list[str]:
    """Slots that have a saved record (for recovery and ``status``)."""
    folder: Path = config.state_dir / "slots"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
