"""The keyring chain a device or a client trusts, and the checks that need it.

Like python-tuf's ``TrustedMetadataSet``, a :class:`TrustedState` takes bytes,
touches neither disk nor network, and returns :class:`~ferry.protocol.verify.Verified`
documents (document, envelope, digest, signers), so nobody parses an envelope
twice. The agent, the SDK and the fleet simulator all walk the keyring through
:meth:`TrustedState.refresh_keyring`: one walk, one set of rules.

    first / pinned ──► trusted keyring ──► refresh_keyring (walk v+1 … latest)
                              │
                              ├──► verify_desired_state (director key, floor)
                              └──► verify_manifest      (bundles key)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from ferry.protocol.documents import BundleManifest, DeltaDescriptor, DesiredState, Keyring
from ferry.protocol.signing import parse_envelope
from ferry.protocol.verify import (
    Raw,
    SequenceFloor,
    Verified,
    check_delta_descriptor,
    check_desired_state,
    check_first_keyring,
    check_keyring,
    check_manifest,
)

MAX_KEYRING_WALK = 1000  # versions walked in one refresh; beyond, the latest must verify directly

FetchKeyring = Callable[[int], bytes]


class TrustedState:
    """One trusted keyring (its root is the pinned root) and every check made under it."""

    def __init__(self, keyring: Verified[Keyring]) -> None:
        self._keyring = keyring

    @classmethod
    def first(
        cls, raw: Raw, now: datetime, pinned_root_keyids: set[str] | None = None
    ) -> TrustedState:
        """Trust a server's keyring for the first time (enrolment, first use of a server)."""
        return cls(check_first_keyring(raw, now, pinned_root_keyids))

    @classmethod
    def pinned(cls, raw: Raw, root_keyids: Iterable[str] | None = None) -> TrustedState:
        """A keyring trusted earlier and stored, signed by its (pinned) root; not expiry-checked:
        it is where the next walk starts, and the walk checks the latest keyring's expiry."""
        pinned = set(root_keyids) if root_keyids is not None else None
        return cls(check_first_keyring(raw, None, pinned))

    @property
    def keyring(self) -> Keyring:
        return self._keyring.document

    @property
    def verified_keyring(self) -> Verified[Keyring]:
        """The trusted keyring with its envelope, to be stored."""
        return self._keyring

    # --- keyring ------------------------------------------------------------------------

    def missing_versions(self, latest: Raw) -> range:
        """The versions between the trusted keyring and ``latest`` that a walk must fetch."""
        target = Keyring.from_dict(parse_envelope(latest).signed).version
        start = self.keyring.version + 1
        return range(start, min(target, self.keyring.version + MAX_KEYRING_WALK))

    def verify_keyring(self, raw: Raw, now: datetime | None) -> Verified[Keyring]:
        """One step: a keyring signed by the trusted root (and its new root) becomes trusted."""
        self._keyring = check_keyring(raw, self.keyring, now)
        return self._keyring

    def refresh_keyring(self, latest: Raw, fetch: FetchKeyring, now: datetime) -> bool:
        """Walk to ``latest`` one version at a time, so root rotations chain up.

        Intermediate versions are not expiry-checked (python-tuf's root walk); the
        latest is. All or nothing: on a refusal the trusted keyring is unchanged.
        Returns True when the trusted version went up.
        """
        walk = TrustedState(self._keyring)
        for version in self.missing_versions(latest):
            walk.verify_keyring(fetch(version), None)
        walk.verify_keyring(latest, now)
        moved = walk.keyring.version > self.keyring.version
        self._keyring = walk.verified_keyring
        return moved

    # --- documents signed under the keyring -----------------------------------------------

    def verify_desired_state(
        self, raw: Raw, *, device_id: str, floor: SequenceFloor, now: datetime
    ) -> Verified[DesiredState]:
        """A directive for ``device_id`` above ``floor`` as it applies under this keyring
        (a floor whose signers were all rotated out is void: ``SequenceFloor.under``)."""
        applied = floor.under(self.keyring)
        return check_desired_state(
            raw,
            self.keyring,
            device_id=device_id,
            last_sequence=applied.sequence,
            last_digest=applied.digest,
            now=now,
        )

    def verify_delta_descriptor(
        self, raw: Raw, *, from_sha256: str, to_sha256: str, to_size: int
    ) -> Verified[DeltaDescriptor]:
        """A delta's signed descriptor (see ``check_delta_descriptor``)."""
        return check_delta_descriptor(
            raw, self.keyring, from_sha256=from_sha256, to_sha256=to_sha256, to_size=to_size
        )

    def verify_manifest(
        self,
        raw: Raw,
        *,
        expected_sha256: str,
        hardware: str | None,
        installed_version: int | None,
        allow_downgrade: bool,
        installed_digests: Mapping[tuple[str, int], str] | None = None,
    ) -> Verified[BundleManifest]:
        """A bundle manifest named by a directive (see ``check_manifest``)."""
        return check_manifest(
            raw,
            self.keyring,
            expected_sha256=expected_sha256,
            hardware=hardware,
            installed_version=installed_version,
            allow_downgrade=allow_downgrade,
            installed_digests=installed_digests,
        )
