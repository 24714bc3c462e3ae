"""What enrolment leaves on the device: identity, credential (0600) and trust state.

The trust state holds the keyring verified last (its root is the pinned root),
and the sequence and digest of the last accepted desired state: the memory that
makes replays and rollbacks detectable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.agent.errors import NotEnrolledError
from ferry.agent.storage import read_json, write_atomic, write_json
from ferry.protocol.documents import Keyring
from ferry.protocol.signing import parse_envelope

SCHEMA = 1


@dataclass(frozen=True)
class Identity:
    """The device as the server knows it."""

    device_id: str
    server_url: str
    groups: tuple[str, ...]
    mqtt: dict[str, Any] | None
    poll_interval_s: float
    credential: str


@dataclass
class TrustState:
    """The trusted keyring envelope and the last accepted desired state."""

    keyring_envelope: dict[str, Any]
    last_sequence: int = 0
    last_digest: str | None = None

    @property
    def keyring(self) -> Keyring:
        """The keyring, parsed from the envelope that was verified before it was saved."""
        return Keyring.from_dict(parse_envelope(self.keyring_envelope).signed)


class DeviceFiles:
    """Paths and (de)serialisation of the enrolment files under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.identity_path = state_dir / "device.json"
        self.credential_path = state_dir / "credential"
        self.trust_path = state_dir / "trust.json"

    def save_identity(self, identity: Identity) -> None:
        """Credential first, both 0600: the identity file also holds the broker password."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.credential_path, identity.credential.encode("ascii"), mode=0o600)
        record = {
            "schema": SCHEMA,
            "device_id": identity.device_id,
            "server_url": identity.server_url,
            "groups": list(identity.groups),
            "mqtt": identity.mqtt,
            "poll_interval_s": identity.poll_interval_s,
        }
        write_json(self.identity_path, record, mode=0o600)

    def load_identity(self) -> Identity:
        record = read_json(self.identity_path)
        if record is None or not self.credential_path.exists():
            raise NotEnrolledError(
                f"no enrolment in {self.state_dir}: run 'ferry-agent enroll' first"
            )
        return Identity(
            device_id=record["device_id"],
            server_url=record["server_url"],
            groups=tuple(record["groups"]),
            mqtt=record["mqtt"],
            poll_interval_s=float(record["poll_interval_s"]),
            credential=self.credential_path.read_text(encoding="ascii").strip(),
        )

    def save_trust(self, trust: TrustState) -> None:
        record = {
            "schema": SCHEMA,
            "keyring": trust.keyring_envelope,
            "last_sequence": trust.last_sequence,
            "last_digest": trust.last_digest,
        }
        write_json(self.trust_path, record)

    def load_trust(self) -> TrustState:
        record = read_json(self.trust_path)
        if record is None:
            raise NotEnrolledError(
                f"no pinned keyring in {self.state_dir}: run 'ferry-agent enroll'"
            )
        return TrustState(record["keyring"], record["last_sequence"], record["last_digest"])
