"""A signing authority for tests: root, bundles and director keys that sign on demand.

Tests bend it to serve attacks (an expired keyring, a directive for another
device, a manifest signed by a stranger) the way python-tuf's repository
simulator does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ferry.protocol.documents import (
    BundleManifest,
    DesiredState,
    FileEntry,
    Keyring,
    Role,
    SlotTarget,
    make_keyring,
)
from ferry.protocol.keys import SigningKey
from ferry.protocol.signing import document_digest, sign_document
from ferry.protocol.timefmt import format_time, utcnow


@dataclass
class Authority:
    """Holds the private keys and signs keyrings, manifests and desired states."""

    now: datetime = field(default_factory=utcnow)
    root: SigningKey = field(default_factory=SigningKey.generate)
    bundles: SigningKey = field(default_factory=SigningKey.generate)
    director: SigningKey = field(default_factory=SigningKey.generate)
    keyring_version: int = 1

    def keyring(self, *, expires_in: timedelta = timedelta(days=365)) -> Keyring:
        return make_keyring(
            self.keyring_version,
            format_time(self.now + expires_in),
            {
                Role.ROOT: [self.root.public],
                Role.BUNDLES: [self.bundles.public],
                Role.DIRECTOR: [self.director.public],
            },
        )

    def signed_keyring(self, *, signers: list[SigningKey] | None = None, **kwargs: Any) -> dict:
        return sign_document(self.keyring(**kwargs).to_dict(), signers or [self.root])

    def manifest(
        self,
        payload: dict[str, bytes],
        *,
        version: int = 1,
        hardware: tuple[str, ...] = ("x86_64",),
        model: str = "vision/detector",
    ) -> BundleManifest:
        namespace, name = model.split("/")
        files = tuple(
            FileEntry(path, hashlib.sha256(data).hexdigest(), len(data))
            for path, data in sorted(payload.items())
        )
        return BundleManifest(
            namespace=namespace,
            model=name,
            version=version,
            files=files,
            format="onnx",
            flavor="onnxruntime",
            signature={
                "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
                "outputs": [],
            },
            hardware=hardware,
            created_at=format_time(self.now),
        )

    def signed_manifest(self, manifest: BundleManifest, signer: SigningKey | None = None) -> dict:
        return sign_document(manifest.to_dict(), [signer or self.bundles])

    def desired_state(
        self,
        device_id: str,
        sequence: int,
        targets: dict[str, BundleManifest],
        *,
        expires_in: timedelta = timedelta(hours=1),
        allow_downgrade: bool = False,
        rollout_id: str | None = "rollout-1",
    ) -> DesiredState:
        slots = {
            slot: SlotTarget(
                manifest.full_name,
                manifest.version,
                document_digest(manifest.to_dict()),
                allow_downgrade,
            )
            for slot, manifest in targets.items()
        }
        return DesiredState(
            device_id=device_id,
            sequence=sequence,
            issued_at=format_time(self.now),
            expires_at=format_time(self.now + expires_in),
            rollout_id=rollout_id,
            slots=slots,
        )

    def signed_desired_state(self, state: DesiredState, signer: SigningKey | None = None) -> dict:
        return sign_document(state.to_dict(), [signer or self.director])
