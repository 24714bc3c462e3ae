"""The install record of one slot: typed, versioned, migrated when an older agent wrote it.

``<state_dir>/slots/<slot>.json`` is what makes crash recovery possible (see
``machine``), so devices in the field carry it across agent upgrades. It is read
only through :func:`load_record`, which migrates older schemas step by step
(Mender's versioned datastore); it is written back in the current schema at the
next step of the machine.

    schema 2  {"schema": 2, "slot", "state", "resumes", "update", "error_code",
               "detail", "last", "installed": [{"model", "version", "manifest_sha256"}]}
    schema 1  the same without "installed" (agents before the same-version check)

State names are the stable strings of :class:`AgentState`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from ferry.agent.errors import InstallError
from ferry.agent.installer import Installed
from ferry.agent.storage import read_json, write_json
from ferry.protocol.documents import AgentState

SCHEMA = 2
T = TypeVar("T")

VersionKey = tuple[str, int]  # (model full name, version)


@dataclass
class Update:
    """The update under way: what the verified directive and manifest asked for, and progress.

    ``manifest`` is the verified manifest envelope (absent for a refusal before it
    verified, and for a manual rollback); ``from_name``/``to_name`` are version folders.
    """

    digest: str
    sequence: int | None = None
    rollout_id: str | None = None
    model: str | None = None
    from_version: int | None = None
    to_version: int | None = None
    from_name: str | None = None
    to_name: str | None = None
    manifest: dict[str, Any] | None = None
    timings: dict[str, int] = field(default_factory=dict)
    bytes_downloaded: int = 0
    started_ms: int | None = None
    step_started_ms: int | None = None

    def public(self) -> dict[str, Any]:
        """What ``ferry-agent status`` shows: everything but the manifest envelope."""
        return {k: v for k, v in asdict(self).items() if k != "manifest"}


@dataclass(frozen=True)
class Outcome:
    """How the last update ended, so that the same directive is not retried for ever."""

    state: AgentState
    digest: str | None
    sequence: int | None
    to_version: int | None
    error_code: str | None


@dataclass
class InstallRecord:
    """One slot's machine state, the update under way and what the slot ever installed."""

    slot: str
    state: AgentState = AgentState.IDLE
    resumes: int = 0
    update: Update | None = None
    error_code: str | None = None
    detail: str = ""
    last: Outcome | None = None
    installed: dict[VersionKey, str] = field(default_factory=dict)

    def finish(self) -> None:
        """Back to idle, keeping the outcome and the installed-version memory."""
        update = self.update
        self.last = Outcome(
            state=self.state,
            digest=update.digest if update else None,
            sequence=update.sequence if update else None,
            to_version=update.to_version if update else None,
            error_code=self.error_code,
        )
        self.state, self.resumes, self.update = AgentState.IDLE, 0, None
        self.error_code, self.detail = None, ""

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "slot": self.slot,
            "state": self.state.value,
            "resumes": self.resumes,
            "update": asdict(self.update) if self.update else None,
            "error_code": self.error_code,
            "detail": self.detail,
            "last": {**asdict(self.last), "state": self.last.state.value} if self.last else None,
            "installed": [
                {"model": model, "version": version, "manifest_sha256": digest}
                for (model, version), digest in sorted(self.installed.items())
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstallRecord:
        """Parse a record in the current schema; KeyError/TypeError/ValueError when corrupt."""
        last = data["last"]
        return cls(
            slot=str(data["slot"]),
            state=AgentState(data["state"]),
            resumes=int(data["resumes"]),
            update=_pick(Update, data["update"]) if data["update"] is not None else None,
            error_code=data["error_code"],
            detail=str(data["detail"]),
            last=_pick(Outcome, {**last, "state": AgentState(last["state"])}) if last else None,
            installed={
                (str(item["model"]), int(item["version"])): str(item["manifest_sha256"])
                for item in data["installed"]
            },
        )


def _pick(cls: Callable[..., T], data: dict[str, Any]) -> T:
    """Build a record dataclass from the keys it knows (older agents wrote a few more)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def migrate_v1(data: dict[str, Any], on_disk: Iterable[Installed]) -> dict[str, Any]:
    """Schema 1 → 2: the same fields, plus the installed-version memory seeded from disk.

    A schema-1 agent kept no such memory; the versions still on disk (current,
    previous, not yet pruned) are the best evidence of what the slot installed.
    """
    installed = [
        {"model": model, "version": version, "manifest_sha256": digest}
        for (model, version), digest in _memory(on_disk).items()
    ]
    return {**data, "schema": 2, "installed": installed}


def _memory(on_disk: Iterable[Installed]) -> dict[VersionKey, str]:
    return {(v.manifest.full_name, v.manifest.version): v.digest for v in on_disk}


def load_record(path: Path, slot: str, on_disk: Callable[[], Iterable[Installed]]) -> InstallRecord:
    """The slot's record (a fresh idle one when none), migrated to the current schema.

    ``on_disk`` lists the slot's installed versions: a migrated or a missing record
    starts its installed-version memory from them. Reading never writes:
    ``ferry-agent status`` may read while the daemon runs.
    """
    data = read_json(path)
    if data is None:
        return InstallRecord(slot, installed=_memory(on_disk()))
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema == 1:
        data = migrate_v1(data, on_disk())
    elif schema != SCHEMA:
        raise InstallError(f"{path}: unknown state schema {schema!r}")
    try:
        return InstallRecord.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise InstallError(f"{path}: corrupt state record ({type(exc).__name__}: {exc})") from exc


def save_record(path: Path, record: InstallRecord) -> None:
    """Write the record atomically and durably, in the current schema."""
    write_json(path, record.to_json())
