"""One slot's files on disk: versions side by side, a ``current`` link, a staging area.

    <models_dir>/<slot>/
        current -> versions/v3-1a2b3c4d5e6f7a8b      (one atomic rename switches it)
        previous -> versions/v2-…                    (instant rollback)
        previous-of-v3-… -> versions/v1-…            (what ``previous`` was before v3's switch)
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

from ferry.agent.crashpoints import crashpoint
from ferry.agent.errors import InstallError
from ferry.agent.storage import fsync_dir, fsync_file, remove_temps, replace_symlink, write_json
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
            crashpoint("stage.moved")
        write_json(self._manifest_path(name), manifest_envelope)
        return target

    def _memo(self, name: str) -> Path:
        return self.root / f"previous-of-{name}"

    def switch(self, name: str, previous: str | None) -> None:
        """Point ``previous`` at the running version, then ``current`` at ``name``.

        What ``previous`` pointed at before is kept as ``previous-of-<name>``, so a
        rollback of ``name`` restores it (N-1 stays reachable). Run again after a
        crash, the memo written by the first run is kept, not overwritten.
        """
        if not self.version_dir(name).is_dir():
            raise InstallError(f"slot {self.name}: version {name} is not installed")
        if previous is not None and previous != name:
            if not self._memo(name).is_symlink():
                self._forget_memos()
                before = _link_name(self.previous_link)
                if before is not None and before != previous:
                    replace_symlink(self._memo(name), f"versions/{before}")
            replace_symlink(self.previous_link, f"versions/{previous}")
            crashpoint("switch.previous")
        replace_symlink(self.current_link, f"versions/{name}")

    def switch_back(self, previous: str | None) -> None:
        """Make ``previous`` current again, or remove ``current`` when there was none.

        ``previous`` then points where it did before the undone switch (or by hand:
        before the version being left was installed), when that version is on disk.
        """
        if previous is None:
            self.current_link.unlink(missing_ok=True)
            fsync_dir(self.root)
            return
        leaving = _link_name(self.current_link)
        memo = self._memo(leaving) if leaving is not None else None
        before = _link_name(memo) if memo is not None else None
        if before is not None and before != previous and self.version_dir(before).is_dir():
            replace_symlink(self.previous_link, f"versions/{before}")
        replace_symlink(self.current_link, f"versions/{previous}")
        if memo is not None and leaving != previous:
            memo.unlink(missing_ok=True)

    def _forget_memos(self) -> None:
        for memo in self.root.glob("previous-of-*"):
            memo.unlink(missing_ok=True)

    def clear_staging(self, keep: str | None = None) -> None:
        """Remove abandoned downloads (all but ``keep``)."""
        if not self.staging_root.is_dir():
            return
        for entry in self.staging_root.iterdir():
            if entry.name != keep:
                shutil.rmtree(entry, ignore_errors=True)

    def _linked(self) -> set[str]:
        """Versions a link points at: never removed, whatever state they are in."""
        return {n for n in map(_link_name, (self.current_link, self.previous_link)) if n}

    def remove_orphans(self) -> list[str]:
        """Delete version folders without a manifest: half-removed (a kill mid-delete).

        Only when no install of this slot is between ``stage``'s move and its
        manifest write (the state machine is idle or committing).
        """
        linked = self._linked()
        orphans = [
            p.name
            for p in self.versions.iterdir()
            if p.is_dir() and p.name not in linked and not self._manifest_path(p.name).exists()
        ]
        for name in orphans:
            shutil.rmtree(self.version_dir(name), ignore_errors=True)
        return orphans

    def sweep(self) -> list[str]:
        """After a restart with the slot idle: remove temp links and half-removed versions."""
        if not self.versions.is_dir():
            return []
        return remove_temps(self.root) + remove_temps(self.versions) + self.remove_orphans()

    def prune(self, keep_versions: int) -> list[str]:
        """Remove the oldest versions beyond ``keep_versions``; never current or previous.

        Half-removed folders go first: one would otherwise count as the newest version
        (its mtime is the moment of the kill) and push a real one out.
        """
        self.remove_orphans()
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
            self._delete(name)
            removed.append(name)
        return removed

    def remove(self, name: str) -> None:
        """Delete a version that was rolled back, unless a link still points at it."""
        protected = {v.name for v in (self.current(), self.previous()) if v is not None}
        if name not in protected:
            self._delete(name)

    def _delete(self, name: str) -> None:
        """Manifest first: from then on the folder is no installed version, only an orphan."""
        self._manifest_path(name).unlink(missing_ok=True)
        fsync_dir(self.versions)
        crashpoint("remove.manifest")
        shutil.rmtree(self.version_dir(name), ignore_errors=True)


def _link_name(link: Path) -> str | None:
    """The version folder name a link points at, or None when there is no link."""
    try:
        return Path(os.readlink(link)).name
    except OSError:
        return None
