"""One slot's files on disk: versions side by side, a ``current`` link, a staging area.

    <models_dir>/<slot>/
        current -> versions/v3-1a2b3c4d5e6f7a8b      (one atomic rename switches it)
        previous -> versions/v2-…                    (instant rollback)
        versions/v3-…/model.onnx                     (each version in its own folder)
        versions/v3-….manifest.json                  (its verified, signed manifest)
        staging/<manifest digest>/                   (downloads in progress)

The installer's verbs are Mender's: stage (install), switch, roll back, commit
(clean up). Each is idempotent, so the state machine can simply run it again
after a crash.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.agent.errors import InstallError
from ferry.agent.storage import fsync_dir, fsync_file, replace_symlink, write_json
from ferry.protocol.documents import BundleManifest
from ferry.protocol.signing import parse_envelope


@dataclass(frozen=True)
class Installed:
    """A version that is on disk, with its manifest."""

    name: str
    path: Path
    manifest: BundleManifest
    digest: str


def version_name(manifest: BundleManifest, digest: str) -> str:
    """The folder of a version: readable, and unique per manifest."""
    return f"v{manifest.version}-{digest[:16]}"


class Slot:
    """The on-disk layout and the atomic verbs of one model slot."""

    def __init__(self, models_dir: Path, name: str) -> None:
        self.name = name
        self.root = models_dir / name
        self.versions = self.root / "versions"
        self.staging_root = self.root / "staging"
        self.current_link = self.root / "current"
        self.previous_link = self.root / "previous"

    def ensure(self) -> None:
        for path in (self.versions, self.staging_root):
            path.mkdir(parents=True, exist_ok=True)

    def staging(self, digest: str) -> Path:
        return self.staging_root / digest

    def version_dir(self, name: str) -> Path:
        return self.versions / name

    def _manifest_path(self, name: str) -> Path:
        return self.versions / f"{name}.manifest.json"

    def _read(self, link: Path) -> Installed | None:
        """The version a link points at, or None when the link or the version is missing."""
        try:
            target = os.readlink(link)
        except (FileNotFoundError, OSError):
            return None
        name = Path(target).name
        return self.installed(name)

    def installed(self, name: str) -> Installed | None:
        """The version stored under ``name``, when both its folder and manifest are present."""
        try:
            envelope = json.loads(self._manifest_path(name).read_bytes())
        except FileNotFoundError:
            return None
        if not self.version_dir(name).is_dir():
            return None
        parsed = parse_envelope(envelope)
        return Installed(
            name, self.version_dir(name), BundleManifest.from_dict(parsed.signed), parsed.digest
        )

    def all_installed(self) -> list[Installed]:
        """Every version on disk (current, previous and older ones not yet pruned)."""
        if not self.versions.is_dir():
            return []
        found = (self.installed(p.name) for p in sorted(self.versions.iterdir()) if p.is_dir())
        return [version for version in found if version is not None]

    def current(self) -> Installed | None:
        return self._read(self.current_link)

    def previous(self) -> Installed | None:
        return self._read(self.previous_link)

    def stage(self, digest: str, name: str, manifest_envelope: dict[str, Any]) -> Path:
        """Move the verified staging folder into ``versions/<name>`` (idempotent).

        The manifest is written after the folder moved: a version counts as
        installed only when both exist.
        """
        target = self.version_dir(name)
        source = self.staging(digest)
        if not target.is_dir():
            if not source.is_dir():
                raise InstallError(f"slot {self.name}: staging folder {source} is gone")
            for file in source.rglob("*"):
                if file.is_file():
                    fsync_file(file)
            os.replace(source, target)
            fsync_dir(self.versions)
        write_json(self._manifest_path(name), manifest_envelope)
        return target

    def switch(self, name: str, previous: str | None) -> None:
        """Point ``previous`` at the running version, then ``current`` at ``name``."""
        if not self.version_dir(name).is_dir():
            raise InstallError(f"slot {self.name}: version {name} is not installed")
        if previous is not None and previous != name:
            replace_symlink(self.previous_link, f"versions/{previous}")
        replace_symlink(self.current_link, f"versions/{name}")

    def switch_back(self, previous: str | None) -> None:
        """Make ``previous`` current again, or remove ``current`` when there was none."""
        if previous is None:
            self.current_link.unlink(missing_ok=True)
            fsync_dir(self.root)
            return
        replace_symlink(self.current_link, f"versions/{previous}")

    def clear_staging(self, keep: str | None = None) -> None:
        """Remove abandoned downloads (all but ``keep``)."""
        if not self.staging_root.is_dir():
            return
        for entry in self.staging_root.iterdir():
            if entry.name != keep:
                shutil.rmtree(entry, ignore_errors=True)

    def prune(self, keep_versions: int) -> list[str]:
        """Remove the oldest versions beyond ``keep_versions``; never current or previous."""
        protected = {v.name for v in (self.current(), self.previous()) if v is not None}
        names = sorted(
            (p.name for p in self.versions.iterdir() if p.is_dir()),
            key=lambda n: self.version_dir(n).stat().st_mtime,
            reverse=True,
        )
        removed = []
        for name in names[keep_versions:]:
            if name in protected:
                continue
            self._manifest_path(name).unlink(missing_ok=True)
            shutil.rmtree(self.version_dir(name), ignore_errors=True)
            removed.append(name)
        return removed

    def remove(self, name: str) -> None:
        """Delete a version that was rolled back, unless a link still points at it."""
        protected = {v.name for v in (self.current(), self.previous()) if v is not None}
        if name not in protected:
            self._manifest_path(name).unlink(missing_ok=True)
            shutil.rmtree(self.version_dir(name), ignore_errors=True)
