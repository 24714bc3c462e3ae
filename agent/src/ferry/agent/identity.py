"""What enrolment leaves on the device: identity, credential (0600) and trust state.

The trust state holds the keyring verified last (its root is the pinned root),
and the sequence floor: sequence, digest and signing director keys of the last
accepted desired state, the memory that makes replays and rollbacks detectable.

``trust.json`` schema 2 adds ``last_signers``; a schema-1 file (agents up to commit
963b750) is read with the director keys of its stored keyring as the floor's
signers, the keys under which it was accepted at the latest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.agent.errors import NotEnrolledError
from ferry.agent.storage import read_json, write_atomic, write_json
from ferry.protocol.documents import Keyring, Role
from ferry.protocol.errors import ProtocolError
from ferry.protocol.trust import TrustedState
from ferry.protocol.verify import SequenceFloor

SCHEMA = 1  # device.json
TRUST_SCHEMA = 2  # trust.json


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
    """The trusted keyring chain and the floor set by the last accepted desired state."""

    chain: TrustedState
    floor: SequenceFloor = field(default_factory=SequenceFloor)

    @property
    def keyring(self) -> Keyring:
        return self.chain.keyring

    @property
    def last_sequence(self) -> int:
        return self.floor.sequence


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
            "schema": TRUST_SCHEMA,
            "keyring": trust.chain.verified_keyring.envelope_dict,
            "last_sequence": trust.floor.sequence,
            "last_digest": trust.floor.digest,
            "last_signers": sorted(trust.floor.signers),
        }
        write_json(self.trust_path, record)

    def load_trust(self) -> TrustState:
        record = read_json(self.trust_path)
        if record is None:
            raise NotEnrolledError(
                f"no pinned keyring in {self.state_dir}: run 'ferry-agent enroll'"
            )
        try:
            trust = TrustState(TrustedState.pinned(record["keyring"]))
        except ProtocolError as exc:
            raise NotEnrolledError(
                f"the keyring pinned in {self.trust_path} does not verify ({exc.code}): "
                f"run 'ferry-agent enroll' again"
            ) from exc
        if record.get("schema", 1) == 1:
            signers = trust.keyring.roles[Role.DIRECTOR].keyids
        else:
            signers = record["last_signers"]
        trust.floor = SequenceFloor(
            record["last_sequence"], record["last_digest"], frozenset(signers)
        )
        return trust
