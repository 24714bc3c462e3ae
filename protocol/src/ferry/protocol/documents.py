"""The documents Ferry exchanges: keyring, bundle manifest, desired state, status report.

Each is a frozen dataclass with ``to_dict()`` (what gets signed or sent) and a
validating ``from_dict()`` that raises ``MalformedError`` naming the bad field.
Signed documents hold only strings, integers, booleans, lists and objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Self

from ferry.protocol.errors import MalformedError
from ferry.protocol.keys import KEY_TYPE, PublicKey
from ferry.protocol.timefmt import parse_time

SPEC_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_MODEL = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}$")


class Role(StrEnum):
    """Key roles listed in the keyring."""

    ROOT = "root"
    BUNDLES = "bundles"
    DIRECTOR = "director"


class AgentState(StrEnum):
    """States of the agent's installer state machine, as stored and reported."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    SWITCHING = "switching"
    PROBING = "probing"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


# The states that end an update: rollout gates count them, so devices make sure
# the server itself (not merely a broker) has received reports of them.
TERMINAL_STATES = frozenset({AgentState.COMMITTED, AgentState.ROLLED_BACK, AgentState.FAILED})


# --- field readers: each names the field it refuses ---------------------------------


def _get(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise MalformedError(f"{where}: missing field '{key}'")
    return data[key]


def _str(data: dict[str, Any], key: str, where: str, pattern: re.Pattern[str] | None = None) -> str:
    value = _get(data, key, where)
    if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
        raise MalformedError(f"{where}: field '{key}' has an invalid value {value!r}")
    return value


def _opt_str(data: dict[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise MalformedError(f"{where}: field '{key}' must be a string or null")
    return value


def _int(data: dict[str, Any], key: str, where: str, minimum: int = 0) -> int:
    value = _get(data, key, where)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MalformedError(f"{where}: field '{key}' must be an integer ≥ {minimum}")
    return value


def _opt_int(data: dict[str, Any], key: str, where: str) -> int | None:
    return None if data.get(key) is None else _int(data, key, where)


def _bool(data: dict[str, Any], key: str, where: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise MalformedError(f"{where}: field '{key}' must be true or false")
    return value


def _dict(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = _get(data, key, where)
    if not isinstance(value, dict):
        raise MalformedError(f"{where}: field '{key}' must be an object")
    return value


def _list(data: dict[str, Any], key: str, where: str) -> list[Any]:
    value = _get(data, key, where)
    if not isinstance(value, list):
        raise MalformedError(f"{where}: field '{key}' must be a list")
    return value


def _time(data: dict[str, Any], key: str, where: str) -> str:
    value = _get(data, key, where)
    parse_time(value, f"{where}.{key}")
    return str(value)


def _header(data: Any, type_name: str) -> dict[str, Any]:
    """Check the object shape, ``_type`` and ``spec_version`` shared by every document."""
    if not isinstance(data, dict):
        raise MalformedError(f"{type_name}: expected a JSON object")
    if data.get("_type") != type_name:
        raise MalformedError(f"expected a {type_name} document, got _type={data.get('_type')!r}")
    if data.get("spec_version") != SPEC_VERSION:
        raise MalformedError(f"{type_name}: unsupported spec_version {data.get('spec_version')!r}")
    return data


def is_safe_relative_path(path: str) -> bool:
    """A bundle file path may not escape the version directory or be ambiguous."""
    parts = path.split("/")
    return (
        bool(path)
        and len(path) <= 255
        and not path.startswith("/")
        and "\\" not in path
        and "\x00" not in path
        and all(part not in ("", ".", "..") for part in parts)
    )


# --- keyring ------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleKeys:
    """Which keys may sign for a role, and how many must."""

    keyids: tuple[str, ...]
    threshold: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"keyids": sorted(self.keyids), "threshold": self.threshold}


@dataclass(frozen=True)
class Keyring:
    """The root-signed list of valid keys per role (TUF's root metadata, in one file)."""

    TYPE: ClassVar[str] = "keyring"
    version: int
    expires: str
    keys: dict[str, PublicKey]
    roles: dict[Role, RoleKeys]

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": self.TYPE,
            "spec_version": SPEC_VERSION,
            "version": self.version,
            "expires": self.expires,
            "keys": {
                kid: {"keytype": KEY_TYPE, "public": key.hex} for kid, key in self.keys.items()
            },
            "roles": {role.value: rk.to_dict() for role, rk in self.roles.items()},
        }

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        where = cls.TYPE
        data = _header(data, cls.TYPE)
        keys = {kid: _parse_key(kid, entry) for kid, entry in _dict(data, "keys", where).items()}
        roles_raw = _dict(data, "roles", where)
        roles: dict[Role, RoleKeys] = {}
        for role in Role:
            if role.value not in roles_raw:
                raise MalformedError(f"keyring: role '{role.value}' is missing")
            roles[role] = _parse_role(role, roles_raw[role.value], keys)
        return cls(
            version=_int(data, "version", where, minimum=1),
            expires=_time(data, "expires", where),
            keys=keys,
            roles=roles,
        )

    def keys_for(self, role: Role) -> dict[str, PublicKey]:
        """The public keys allowed to sign for ``role``, by key id."""
        return {kid: self.keys[kid] for kid in self.roles[role].keyids}


def _parse_key(keyid: str, entry: Any) -> PublicKey:
    if not isinstance(entry, dict) or entry.get("keytype") != KEY_TYPE:
        raise MalformedError(f"keyring: key {keyid[:12]}… must be an {KEY_TYPE} key")
    key = PublicKey.from_hex(entry.get("public"))
    if key.keyid != keyid:
        raise MalformedError(f"keyring: key id {keyid[:12]}… does not match its public key")
    return key


def _parse_role(role: Role, entry: Any, keys: dict[str, PublicKey]) -> RoleKeys:
    where = f"keyring.roles.{role.value}"
    if not isinstance(entry, dict):
        raise MalformedError(f"{where}: expected an object")
    keyids = _list(entry, "keyids", where)
    threshold = _int(entry, "threshold", where, minimum=1)
    if any(kid not in keys for kid in keyids) or len(set(keyids)) != len(keyids):
        raise MalformedError(f"{where}: lists an unknown or repeated key id")
    if threshold > len(keyids):
        raise MalformedError(f"{where}: threshold {threshold} exceeds its {len(keyids)} keys")
    return RoleKeys(tuple(keyids), threshold)


# --- bundle manifest ----------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """One file of a bundle: where it goes, what it hashes to, how long it is."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        where = "manifest.files[]"
        if not isinstance(data, dict):
            raise MalformedError(f"{where}: expected an object")
        path = _str(data, "path", where)
        if not is_safe_relative_path(path):
            raise MalformedError(f"{where}: unsafe path {path!r}")
        return cls(path, _str(data, "sha256", where, _SHA256), _int(data, "size", where))


@dataclass(frozen=True)
class BundleManifest:
    """What a model version is, byte for byte; signed by a ``bundles`` key, immutable."""

    TYPE: ClassVar[str] = "bundle-manifest"
    namespace: str
    model: str
    version: int
    files: tuple[FileEntry, ...]
    format: str
    flavor: str
    signature: dict[str, Any]
    hardware: tuple[str, ...]
    created_at: str

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.model}"

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    def supports(self, hardware: str) -> bool:
        """An empty hardware list means any hardware."""
        return not self.hardware or hardware in self.hardware

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": self.TYPE,
            "spec_version": SPEC_VERSION,
            "namespace": self.namespace,
            "model": self.model,
            "version": self.version,
            "files": [entry.to_dict() for entry in self.files],
            "format": self.format,
            "flavor": self.flavor,
            "signature": self.signature,
            "hardware": list(self.hardware),
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        where = cls.TYPE
        data = _header(data, cls.TYPE)
        files = tuple(FileEntry.from_dict(item) for item in _list(data, "files", where))
        if not files:
            raise MalformedError(f"{where}: a bundle has at least one file")
        if len({entry.path for entry in files}) != len(files):
            raise MalformedError(f"{where}: two files share a path")
        hardware = _list(data, "hardware", where)
        if not all(isinstance(item, str) and item for item in hardware):
            raise MalformedError(f"{where}: hardware must be a list of non-empty strings")
        return cls(
            namespace=_str(data, "namespace", where, _NAME),
            model=_str(data, "model", where, _NAME),
            version=_int(data, "version", where, minimum=1),
            files=files,
            format=_str(data, "format", where),
            flavor=_str(data, "flavor", where),
            signature=_dict(data, "signature", where),
            hardware=tuple(hardware),
            created_at=_time(data, "created_at", where),
        )


# --- desired state ------------------------------------------------------------------


@dataclass(frozen=True)
class SlotTarget:
    """The version one model slot of a device should run."""

    model: str
    version: int
    manifest_sha256: str
    allow_downgrade: bool = False
    rollout_id: str | None = None
    """The rollout this slot answers to (two rollouts of two models may target one device
    at once; the document-level ``rollout_id`` names only the newest)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "manifest_sha256": self.manifest_sha256,
            "allow_downgrade": self.allow_downgrade,
            **({"rollout_id": self.rollout_id} if self.rollout_id is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Any, slot: str) -> Self:
        where = f"desired-state.slots.{slot}"
        if not isinstance(data, dict):
            raise MalformedError(f"{where}: expected an object")
        return cls(
            model=_str(data, "model", where, _MODEL),
            version=_int(data, "version", where, minimum=1),
            manifest_sha256=_str(data, "manifest_sha256", where, _SHA256),
            allow_downgrade=_bool(data, "allow_downgrade", where),
            rollout_id=_opt_str(data, "rollout_id", where),
        )


@dataclass(frozen=True)
class DesiredState:
    """Per-device directive signed by a ``director`` key (Uptane's director role).

    Binding the device id and a strictly increasing sequence number stops a
    directive being replayed on another device or later.
    """

    TYPE: ClassVar[str] = "desired-state"
    device_id: str
    sequence: int
    issued_at: str
    expires_at: str
    rollout_id: str | None
    slots: dict[str, SlotTarget] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": self.TYPE,
            "spec_version": SPEC_VERSION,
            "device_id": self.device_id,
            "sequence": self.sequence,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "rollout_id": self.rollout_id,
            "slots": {name: target.to_dict() for name, target in self.slots.items()},
        }

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        where = cls.TYPE
        data = _header(data, cls.TYPE)
        slots_raw = _dict(data, "slots", where)
        for name in slots_raw:
            if not _NAME.match(name):
                raise MalformedError(f"{where}: invalid slot name {name!r}")
        return cls(
            device_id=_str(data, "device_id", where),
            sequence=_int(data, "sequence", where, minimum=1),
            issued_at=_time(data, "issued_at", where),
            expires_at=_time(data, "expires_at", where),
            rollout_id=_opt_str(data, "rollout_id", where),
            slots={name: SlotTarget.from_dict(raw, name) for name, raw in slots_raw.items()},
        )


# --- status report (sent by devices; authenticated by the transport, not signed) -----


@dataclass(frozen=True)
class StatusReport:
    """One state transition of one slot on one device.

    ``report_id`` is unique per report so that a resend (after an offline spell
    or over both MQTT and HTTP) is counted once.
    """

    TYPE: ClassVar[str] = "status-report"
    report_id: str
    device_id: str
    slot: str
    state: AgentState
    at: str
    from_version: int | None = None
    to_version: int | None = None
    error_code: str | None = None
    detail: str = ""
    sequence: int | None = None
    rollout_id: str | None = None
    bytes_downloaded: int = 0
    timings: dict[str, int] = field(default_factory=dict)
    report_seq: int | None = None
    """The device's own counter, increased for every report it makes and kept across
    restarts: the server orders a device's reports by it (absent from older agents)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": self.TYPE,
            "spec_version": SPEC_VERSION,
            "report_id": self.report_id,
            "device_id": self.device_id,
            "slot": self.slot,
            "state": self.state.value,
            "at": self.at,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "error_code": self.error_code,
            "detail": self.detail,
            "sequence": self.sequence,
            "rollout_id": self.rollout_id,
            "bytes_downloaded": self.bytes_downloaded,
            "timings": dict(self.timings),
            **({"report_seq": self.report_seq} if self.report_seq is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        where = cls.TYPE
        data = _header(data, cls.TYPE)
        try:
            state = AgentState(_str(data, "state", where))
        except ValueError as exc:
            raise MalformedError(f"{where}: unknown state {data.get('state')!r}") from exc
        timings = data.get("timings", {})
        if not isinstance(timings, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in timings.values()
        ):
            raise MalformedError(f"{where}: timings must map names to non-negative integers (ms)")
        detail = data.get("detail", "")
        if not isinstance(detail, str) or len(detail) > 4096:
            raise MalformedError(f"{where}: detail must be a string of at most 4096 characters")
        return cls(
            report_id=_str(data, "report_id", where),
            device_id=_str(data, "device_id", where),
            slot=_str(data, "slot", where, _NAME),
            state=state,
            at=_time(data, "at", where),
            from_version=_opt_int(data, "from_version", where),
            to_version=_opt_int(data, "to_version", where),
            error_code=_opt_str(data, "error_code", where),
            detail=detail,
            sequence=_opt_int(data, "sequence", where),
            rollout_id=_opt_str(data, "rollout_id", where),
            bytes_downloaded=_int(data, "bytes_downloaded", where)
            if "bytes_downloaded" in data
            else 0,
            timings=dict(timings),
            report_seq=_opt_int(data, "report_seq", where),
        )


def make_keyring(
    version: int,
    expires: str,
    role_keys: dict[Role, list[PublicKey]],
    thresholds: dict[Role, int] | None = None,
) -> Keyring:
    """Assemble a keyring from the public keys of each role (thresholds default to 1)."""
    thresholds = thresholds or {}
    keys = {key.keyid: key for keys_ in role_keys.values() for key in keys_}
    roles = {
        role: RoleKeys(tuple(key.keyid for key in role_keys[role]), thresholds.get(role, 1))
        for role in Role
    }
    return Keyring(version=version, expires=expires, keys=keys, roles=roles)


# --- the delta descriptor (signed by a bundles key; served beside each delta) ---------------

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
DELTA_FORMATS = ("ferry-delta/1", "bsdiff40")


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
        if not isinstance(data, dict) or set(data) != set(_DESCRIPTOR_FIELDS):
            raise MalformedError(
                f"{where}: expected exactly the fields {sorted(_DESCRIPTOR_FIELDS)}"
            )
        if data["_type"] != cls.TYPE or data["spec_version"] != SPEC_VERSION:
            raise MalformedError(f"{where}: wrong _type or spec_version")
        for key in ("from_manifest", "to_manifest", "from_sha256", "to_sha256", "delta_sha256"):
            if not isinstance(data[key], str) or not _SHA256_RE.match(data[key]):
                raise MalformedError(f"{where}: field '{key}' must be a lowercase hex sha256")
        for key in ("to_size", "delta_size"):
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MalformedError(f"{where}: field '{key}' must be an integer ≥ 0")
        if not isinstance(data["path"], str) or not is_safe_relative_path(data["path"]):
            raise MalformedError(f"{where}: unsafe path {data['path']!r}")
        if data["format"] not in DELTA_FORMATS:
            raise MalformedError(f"{where}: format must be one of {DELTA_FORMATS}")
        return cls(
            **{key: data[key] for key in _DESCRIPTOR_FIELDS if not key.startswith(("_", "spec"))}
        )


_DESCRIPTOR_FIELDS = (
    "_type", "spec_version", "from_manifest", "to_manifest", "path", "from_sha256",
    "to_sha256", "to_size", "delta_sha256", "delta_size", "format",
)  # fmt: skip
