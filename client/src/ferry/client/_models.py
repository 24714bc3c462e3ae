"""Typed values returned by the SDK: plain dataclasses built from the server's JSON.

``from_json`` ignores fields it does not know, so a newer server does not break an
older client; ``to_json`` gives back a JSON-ready dict (used by ``ferry ... --json``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self


class _Record:
    """Shared (de)serialisation for the records below."""

    # Every subclass is a @dataclass; declaring the marker lets mypy see that.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in dataclasses.asdict(self).items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class Identity(_Record):
    """Who the current token belongs to."""

    name: str
    role: str
    namespaces: list[str]


@dataclass(frozen=True)
class Token(_Record):
    """An API token; ``token`` (the secret) is only set in the answer to a create."""

    id: int | str
    name: str
    role: str
    namespaces: list[str]
    created_at: str | None = None
    expires_at: str | None = None
    revoked_at: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class Namespace(_Record):
    """A team's namespace; models live in exactly one."""

    name: str
    require_distinct_approver: bool = False
    description: str | None = None
    created_at: str | None = None


@dataclass(frozen=True)
class Model(_Record):
    """A registered model; ``aliases`` maps alias name to version number."""

    namespace: str
    name: str
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    latest_version: int | None = None
    aliases: dict[str, int] = field(default_factory=dict)
    created_at: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        model = super().from_json(data)
        return dataclasses.replace(model, aliases=_alias_map(data.get("aliases")))


def _alias_map(raw: Any) -> dict[str, int]:
    """Accept both ``{"champion": 3}`` and ``[{"alias": "champion", "version": 3}]``."""
    if isinstance(raw, dict):
        return {str(k): int(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return {str(a["alias"]): int(a["version"]) for a in raw if isinstance(a, dict)}
    return {}


@dataclass(frozen=True)
class FileEntry(_Record):
    """One file of a bundle: its path inside the bundle, digest and size."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Version(_Record):
    """An immutable model version as the registry describes it."""

    namespace: str
    model: str
    version: int
    stage: str = "None"
    files: list[FileEntry] = field(default_factory=list)
    manifest_sha256: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    format: str | None = None
    flavor: str | None = None
    signature: dict[str, Any] = field(default_factory=dict)
    hardware: list[str] = field(default_factory=list)
    created_at: str | None = None
    created_by_actor: str | None = None
    stage_changed_at: str | None = None
    # Only in the answer to `push_version`: True when the files were already registered
    # as this version (nothing new was created), with the metadata fields that differ.
    existing: bool = False
    differences: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        version = super().from_json(data)
        files = [FileEntry.from_json(f) for f in data.get("files") or []]
        aliases = data.get("aliases") or []
        if isinstance(aliases, dict):
            aliases = list(aliases)
        return dataclasses.replace(version, files=files, aliases=list(aliases))

    @property
    def ref(self) -> str:
        """``ns/model@version``, the form the CLI accepts."""
        return f"{self.namespace}/{self.model}@{self.version}"


@dataclass(frozen=True)
class AliasBinding(_Record):
    """An alias pointing at a version number."""

    alias: str
    version: int


@dataclass(frozen=True)
class AuditEntry(_Record):
    """One hash-chained audit log entry."""

    id: int
    at: str
    actor: str
    action: str
    target: str | None = None
    details: Any = None
    prev_hash: str | None = None
    hash: str | None = None


@dataclass(frozen=True)
class DownloadResult(_Record):
    """What ``download_version`` verified and wrote."""

    namespace: str
    model: str
    version: int
    manifest_sha256: str
    dest_dir: Path
    files: list[Path]
    bytes_downloaded: int


@dataclass(frozen=True)
class TransferProgress:
    """One progress tick of an upload or download, given to ``progress`` callbacks."""

    name: str
    done: int
    total: int
    skipped: bool = False
