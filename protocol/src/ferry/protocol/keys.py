"""Ed25519 keys: generate, save with 0600, load, and name by key id.

A key id is the hex sha256 of the raw 32-byte public key, so anyone holding the
public key can recompute it. Private keys are PKCS#8 PEM files that OpenSSL reads.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ferry.protocol.errors import MalformedError

KEY_TYPE = "ed25519"


@dataclass(frozen=True)
class PublicKey:
    """A verifying key as it appears in a keyring."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise MalformedError("an ed25519 public key is 32 bytes")

    @classmethod
    def from_hex(cls, text: object) -> PublicKey:
        """Read the hex form used in keyrings."""
        if not isinstance(text, str):
            raise MalformedError("public key must be a hex string")
        try:
            return cls(bytes.fromhex(text))
        except ValueError as exc:
            raise MalformedError("public key is not valid hex") from exc

    @property
    def hex(self) -> str:
        """Lower-case hex of the raw key."""
        return self.raw.hex()

    @property
    def keyid(self) -> str:
        """Hex sha256 of the raw public key."""
        return hashlib.sha256(self.raw).hexdigest()

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is this key's Ed25519 signature over ``data``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM, for ``openssl pkeyutl -verify -rawin``."""
        key = Ed25519PublicKey.from_public_bytes(self.raw)
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class SigningKey:
    """A private Ed25519 key. Never logged, never serialised except to its own file."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw)

    def __repr__(self) -> str:
        return f"SigningKey(keyid={self.public.keyid[:12]}…)"

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        """Load from unencrypted PKCS#8 PEM."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise MalformedError(f"not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise MalformedError("private key is not Ed25519")
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Load a key file written by :meth:`save`."""
        return cls.from_pem(Path(path).read_bytes())

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM."""
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def save(self, path: Path) -> None:
        """Write atomically with mode 0600 from the first byte (never world-readable)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.to_pem())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature over ``data`` (64 bytes)."""
        return self._private.sign(data)
