"""The one verification checklist that every download passes, in a fixed order.

Like python-tuf's trusted metadata set, these functions take raw bytes, touch
neither disk nor network, and check in the same order every time:

    parse → trusted keys → signature → binding (device / digest / hardware)
          → expiry → version or sequence → length → hash

Each refusal raises its own ``ProtocolError`` subclass with a stable ``code``;
nothing is returned (and so nothing can be persisted) before every check passed.
The ``check_*`` functions return the document as :class:`Verified`, with its
envelope, digest and signers; ``ferry.protocol.trust.TrustedState`` holds the
trusted keyring chain and is what devices and clients call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from ferry.protocol.canonical import canonical_json
from ferry.protocol.documents import BundleManifest, DeltaDescriptor, DesiredState, Keyring, Role
from ferry.protocol.errors import (
    BadSignatureError,
    DigestMismatchError,
    ExpiredDesiredStateError,
    ExpiredKeyringError,
    HashMismatchError,
    IncompatibleHardwareError,
    KeyringRollbackError,
    LengthExceededError,
    SequenceRollbackError,
    TruncatedError,
    UntrustedKeyError,
    VersionConflictError,
    VersionDowngradeError,
    WrongDeviceError,
)
from ferry.protocol.keys import PublicKey
from ferry.protocol.signing import Envelope, parse_envelope
from ferry.protocol.timefmt import parse_time

Raw = bytes | dict[str, Any]
D = TypeVar("D")


def check_signatures(
    envelope: Envelope, keys: dict[str, PublicKey], threshold: int, what: str
) -> frozenset[str]:
    """Trusted keys, then signatures: ``threshold`` distinct trusted keys must have signed.

    A signature claiming a trusted key id that does not verify is a bad signature
    (tampering), not merely an untrusted one. Returns the ids of the trusted keys
    that signed.
    """
    trusted = [sig for sig in envelope.signatures if sig.keyid in keys]
    if not trusted:
        raise UntrustedKeyError(f"{what} is not signed by any trusted key")
    valid: set[str] = set()
    for sig in trusted:
        if not keys[sig.keyid].verify(sig.sig, envelope.signed_bytes):
            raise BadSignatureError(f"{what}: signature by key {sig.keyid[:12]}… does not verify")
        valid.add(sig.keyid)
    if len(valid) < threshold:
        raise UntrustedKeyError(f"{what}: {len(valid)} of {threshold} required trusted signatures")
    return frozenset(valid)


@dataclass(frozen=True)
class Verified(Generic[D]):
    """A document that passed the checklist, with the envelope it came in.

    Callers store or compare the envelope and its digest from here instead of
    parsing the bytes a second time.
    """

    document: D
    envelope: Envelope
    signers: frozenset[str]  # the trusted keys whose signatures verified

    @property
    def digest(self) -> str:
        """Hex sha256 of the canonical signed bytes (what desired states name)."""
        return self.envelope.digest

    @property
    def envelope_dict(self) -> dict[str, Any]:
        """The envelope as a JSON object, to be stored once verified."""
        signatures = [{"keyid": s.keyid, "sig": s.sig.hex()} for s in self.envelope.signatures]
        return {"signed": self.envelope.signed, "signatures": signatures}

    @property
    def envelope_bytes(self) -> bytes:
        """The canonical bytes of the whole envelope."""
        return canonical_json(self.envelope_dict)


def check_first_keyring(
    raw: Raw, now: datetime | None, pinned_root_keyids: set[str] | None = None
) -> Verified[Keyring]:
    """Accept a keyring on its own root's word (enrolment, or a keyring stored earlier).

    When root key ids are pinned (passed out of band, or remembered), the root must
    be among them; otherwise this is trust on first use and the root is pinned from
    now on. ``now=None`` skips the expiry check (a stored step of a walk).
    """
    envelope = parse_envelope(raw)
    keyring = Keyring.from_dict(envelope.signed)
    root = keyring.roles[Role.ROOT]
    if pinned_root_keyids is not None and not set(root.keyids) <= pinned_root_keyids:
        raise UntrustedKeyError("keyring root is not the root key pinned for this server")
    signers = check_signatures(envelope, keyring.keys_for(Role.ROOT), root.threshold, "keyring")
    if now is not None:
        _check_keyring_expiry(keyring, now)
    return Verified(keyring, envelope, signers)


def check_keyring(raw: Raw, trusted: Keyring, now: datetime | None) -> Verified[Keyring]:
    """Verify a newer keyring against the trusted one.

    It must be signed by the trusted root; when it rotates the root, by the new
    root as well (proof that the new root key exists and is held). ``now=None``
    skips the expiry check, for the intermediate steps of a walk over versions.
    """
    envelope = parse_envelope(raw)
    keyring = Keyring.from_dict(envelope.signed)
    old_root = trusted.roles[Role.ROOT]
    signers = check_signatures(envelope, trusted.keys_for(Role.ROOT), old_root.threshold, "keyring")
    new_root = keyring.roles[Role.ROOT]
    if new_root != old_root:
        signers |= check_signatures(
            envelope, keyring.keys_for(Role.ROOT), new_root.threshold, "keyring (new root)"
        )
    if now is not None:
        _check_keyring_expiry(keyring, now)
    if keyring.version < trusted.version:
        raise KeyringRollbackError(
            f"keyring version {keyring.version} is lower than trusted version {trusted.version}"
        )
    if keyring.version == trusted.version and keyring != trusted:
        raise KeyringRollbackError(f"a different keyring reuses version {keyring.version}")
    return Verified(keyring, envelope, signers)


def _check_keyring_expiry(keyring: Keyring, now: datetime) -> None:
    if parse_time(keyring.expires) <= now:
        raise ExpiredKeyringError(f"keyring version {keyring.version} expired at {keyring.expires}")


@dataclass(frozen=True)
class SequenceFloor:
    """The last accepted desired state: its sequence, its digest and the director keys that
    signed it. A directive must be above it (or be that very document again)."""

    sequence: int = 0
    digest: str | None = None
    signers: frozenset[str] = frozenset()

    @classmethod
    def accepted(cls, verified: Verified[DesiredState]) -> SequenceFloor:
        """The floor a verified desired state sets."""
        return cls(verified.document.sequence, verified.digest, verified.signers)

    def under(self, keyring: Keyring) -> SequenceFloor:
        """The floor that applies under ``keyring`` (TUF/Uptane fast-forward recovery).

        A floor belongs to the director keys that signed it: once none of them is a
        director key any more (a root-signed keyring rotated them out), it is void
        and sequences start again from 0. Otherwise a compromised director key that
        signed sequence 2^53-1 would lock the device out of every later directive.
        While one of its signers is still trusted, the floor holds (no replay of
        older directives signed by that key).
        """
        if self.signers.isdisjoint(keyring.roles[Role.DIRECTOR].keyids):
            return SequenceFloor()
        return self


def check_desired_state(
    raw: Raw,
    keyring: Keyring,
    *,
    device_id: str,
    last_sequence: int,
    last_digest: str | None,
    now: datetime,
) -> Verified[DesiredState]:
    """Verify the per-device directive: director key, this device, not expired, not replayed.

    The same document again (same sequence, same digest) is accepted: polling
    fetches it repeatedly. A different document with a sequence not above the
    last accepted one is a replay.
    """
    envelope = parse_envelope(raw)
    state = DesiredState.from_dict(envelope.signed)
    director = keyring.roles[Role.DIRECTOR]
    signers = check_signatures(
        envelope, keyring.keys_for(Role.DIRECTOR), director.threshold, "desired state"
    )
    if state.device_id != device_id:
        raise WrongDeviceError(
            f"desired state is for device {state.device_id!r}, not {device_id!r}"
        )
    if parse_time(state.expires_at) <= now:
        raise ExpiredDesiredStateError(f"desired state expired at {state.expires_at}")
    replay = state.sequence < last_sequence or (
        state.sequence == last_sequence and envelope.digest != last_digest
    )
    if replay:
        raise SequenceRollbackError(
            f"desired state sequence {state.sequence} is not newer than accepted {last_sequence}"
        )
    return Verified(state, envelope, signers)


def check_manifest(
    raw: Raw,
    keyring: Keyring,
    *,
    expected_sha256: str,
    hardware: str | None,
    installed_version: int | None,
    allow_downgrade: bool,
    installed_digests: Mapping[tuple[str, int], str] | None = None,
) -> Verified[BundleManifest]:
    """Verify a bundle manifest: bundles key, the digest the directive named, hardware, version.

    ``hardware=None`` skips the hardware binding (an operator pulling a bundle, not
    a device installing it). ``installed_version`` is the version of the same model
    this slot runs now (None when none); going below it needs ``allow_downgrade``
    from the signed desired state, i.e. an explicitly signed rollback.
    ``installed_digests`` maps (model, version) to the manifest digest the slot
    installed under that version: a different manifest for the same version is
    refused, even as a signed rollback (TUF's "same version, different hash":
    versions are immutable once signed).
    """
    envelope = parse_envelope(raw)
    manifest = BundleManifest.from_dict(envelope.signed)
    bundles = keyring.roles[Role.BUNDLES]
    signers = check_signatures(
        envelope, keyring.keys_for(Role.BUNDLES), bundles.threshold, "manifest"
    )
    if envelope.digest != expected_sha256:
        raise DigestMismatchError(
            f"manifest digest {envelope.digest[:12]}… is not the {expected_sha256[:12]}… directed"
        )
    if hardware is not None and not manifest.supports(hardware):
        raise IncompatibleHardwareError(
            f"{manifest.full_name} v{manifest.version} supports {list(manifest.hardware)}, "
            f"not {hardware!r}"
        )
    known = (installed_digests or {}).get((manifest.full_name, manifest.version))
    if known is not None and known != envelope.digest:
        raise VersionConflictError(
            f"{manifest.full_name} v{manifest.version} was installed as manifest {known[:12]}…, "
            f"not {envelope.digest[:12]}…"
        )
    downgrade = installed_version is not None and manifest.version < installed_version
    if downgrade and not allow_downgrade:
        raise VersionDowngradeError(
            f"{manifest.full_name} v{manifest.version} is older than installed v{installed_version}"
        )
    return Verified(manifest, envelope, signers)


def check_delta_descriptor(
    raw: Raw, keyring: Keyring, *, from_sha256: str, to_sha256: str, to_size: int
) -> Verified[DeltaDescriptor]:
    """Verify a delta's descriptor before a byte of the delta reaches a decoder.

    Bundles key, then the pair it names: the old file this device has, the new file the
    manifest declares (digest and size). The descriptor's ``delta_sha256`` and
    ``delta_size`` then cap and check the delta download itself.
    """
    envelope = parse_envelope(raw)
    descriptor = DeltaDescriptor.from_dict(envelope.signed)
    bundles = keyring.roles[Role.BUNDLES]
    signers = check_signatures(
        envelope, keyring.keys_for(Role.BUNDLES), bundles.threshold, "delta descriptor"
    )
    named = (descriptor.from_sha256, descriptor.to_sha256, descriptor.to_size)
    if named != (from_sha256, to_sha256, to_size):
        raise DigestMismatchError(
            f"delta descriptor is for {descriptor.from_sha256[:12]}…→{descriptor.to_sha256[:12]}… "
            f"({descriptor.to_size} bytes), not {from_sha256[:12]}…→{to_sha256[:12]}…"
        )
    return Verified(descriptor, envelope, signers)


# --- the same checks, returning the document only ----------------------------------------
# Devices and clients hold a ``ferry.protocol.trust.TrustedState``, which returns
# ``Verified`` documents; these wrappers serve callers that need only the document.


def trust_first_keyring(
    raw: Raw, now: datetime, pinned_root_keyids: set[str] | None = None
) -> Keyring:
    """:func:`check_first_keyring`, the keyring only."""
    return check_first_keyring(raw, now, pinned_root_keyids).document


def verify_keyring(raw: Raw, trusted: Keyring, now: datetime | None) -> Keyring:
    """:func:`check_keyring`, the keyring only."""
    return check_keyring(raw, trusted, now).document


def verify_desired_state(
    raw: Raw,
    keyring: Keyring,
    *,
    device_id: str,
    last_sequence: int,
    last_digest: str | None,
    now: datetime,
) -> DesiredState:
    """:func:`check_desired_state`, the desired state only."""
    return check_desired_state(
        raw, keyring, device_id=device_id, last_sequence=last_sequence,
        last_digest=last_digest, now=now,
    ).document  # fmt: skip


def verify_manifest(
    raw: Raw,
    keyring: Keyring,
    *,
    expected_sha256: str,
    hardware: str,
    installed_version: int | None,
    allow_downgrade: bool,
    installed_digests: Mapping[tuple[str, int], str] | None = None,
) -> BundleManifest:
    """:func:`check_manifest`, the manifest only."""
    return check_manifest(
        raw, keyring, expected_sha256=expected_sha256, hardware=hardware,
        installed_version=installed_version, allow_downgrade=allow_downgrade,
        installed_digests=installed_digests,
    ).document  # fmt: skip


class FileVerifier:
    """Length and hash of a streamed file: refuses a byte past the declared size at once."""

    def __init__(self, size: int, sha256: str, what: str = "file") -> None:
        self.size = size
        self.sha256 = sha256
        self.what = what
        self.received = 0
        self._hash = hashlib.sha256()

    def update(self, chunk: bytes | memoryview) -> None:
        """Feed the next bytes; raises before hashing anything beyond ``size``."""
        if self.received + len(chunk) > self.size:
            raise LengthExceededError(f"{self.what}: more than the declared {self.size} bytes")
        self.received += len(chunk)
        self._hash.update(chunk)

    def finish(self) -> None:
        """Check that exactly ``size`` bytes arrived and that they hash right."""
        if self.received < self.size:
            raise TruncatedError(f"{self.what}: {self.received} of {self.size} bytes")
        if self._hash.hexdigest() != self.sha256:
            raise HashMismatchError(f"{self.what}: sha256 {self._hash.hexdigest()[:12]}… is wrong")


def verify_file(path: Path, size: int, sha256: str, chunk_size: int = 1 << 20) -> None:
    """Stream a file from disk through a :class:`FileVerifier`."""
    verifier = FileVerifier(size, sha256, what=str(path))
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            verifier.update(chunk)
    verifier.finish()
