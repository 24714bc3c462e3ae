"""The delta descriptor: the signed statement that a delta leads from one version to another.

Signed by a ``bundles`` key with :func:`ferry.protocol.signing.sign_document`.
It lets the agent cap and hash the delta download; the *result* is still
verified against the target manifest's size and sha256, so a wrong descriptor
can waste a download but never install the wrong bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from ferry.protocol.documents import SPEC_VERSION, is_safe_relative_path
from ferry.protocol.errors import MalformedError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
FORMATS = ("ferry-delta/1", "bsdiff40")


@dataclass(frozen=True)
class DeltaDescriptor:
    """From-version digest, to-version digest, and the delta's own size and sha256."""

    TYPE: ClassVar[str] = "delta-descriptor"
    from_manifest: str  # document digest of the installed version's manifest
    to_manifest: str  # document digest of the target version's manifest
    path: str  # the bundle file this delta rebuilds
    from_sha256: str
    to_sha256: str
    to_size: int
    delta_sha256: str
    delta_size: int
    format: str = "ferry-delta/1"

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": self.TYPE,
            "spec_version": SPEC_VERSION,
            "from_manifest": self.from_manifest,
            "to_manifest": self.to_manifest,
            "path": self.path,
            "from_sha256": self.from_sha256,
            "to_sha256": self.to_sha256,
            "to_size": self.to_size,
            "delta_sha256": self.delta_sha256,
            "delta_size": self.delta_size,
            "format": self.format,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        where = cls.TYPE
        if not isinstance(data, dict) or set(data) != set(_FIELDS):
            raise MalformedError(f"{where}: expected exactly the fields {sorted(_FIELDS)}")
        if data["_type"] != cls.TYPE or data["spec_version"] != SPEC_VERSION:
            raise MalformedError(f"{where}: wrong _type or spec_version")
        for key in ("from_manifest", "to_manifest", "from_sha256", "to_sha256", "delta_sha256"):
            if not isinstance(data[key], str) or not _SHA256.match(data[key]):
                raise MalformedError(f"{where}: field '{key}' must be a lowercase hex sha256")
        for key in ("to_size", "delta_size"):
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MalformedError(f"{where}: field '{key}' must be an integer ≥ 0")
        if not isinstance(data["path"], str) or not is_safe_relative_path(data["path"]):
            raise MalformedError(f"{where}: unsafe path {data['path']!r}")
        if data["format"] not in FORMATS:
            raise MalformedError(f"{where}: format must be one of {FORMATS}")
        return cls(**{key: data[key] for key in _FIELDS if not key.startswith(("_", "spec"))})


_FIELDS = (
    "_type", "spec_version", "from_manifest", "to_manifest", "path", "from_sha256",
    "to_sha256", "to_size", "delta_sha256", "delta_size", "format",
)  # fmt: skip
