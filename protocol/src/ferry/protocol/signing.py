"""Signed envelopes: ``{"signed": {...}, "signatures": [{"keyid", "sig"}]}``.

Signatures cover ``canonical_json(signed)`` only, so an envelope can gain a
signature (root rotation) without changing what earlier signers signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ferry.protocol.canonical import canonical_json, parse_json
from ferry.protocol.errors import MalformedError
from ferry.protocol.keys import SigningKey


@dataclass(frozen=True)
class Signature:
    """One signature inside an envelope."""

    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope: the signed document, its canonical bytes and signatures."""

    signed: dict[str, Any]
    signed_bytes: bytes
    signatures: tuple[Signature, ...]

    @property
    def digest(self) -> str:
        """Hex sha256 of the canonical signed bytes: the document's identity."""
        return hashlib.sha256(self.signed_bytes).hexdigest()


def document_digest(signed: dict[str, Any]) -> str:
    """Hex sha256 of ``canonical_json(signed)``; names a manifest in desired states."""
    return hashlib.sha256(canonical_json(signed)).hexdigest()


def sign_document(signed: dict[str, Any], keys: Iterable[SigningKey]) -> dict[str, Any]:
    """Build an envelope with one signature per key."""
    payload = canonical_json(signed)
    signatures = [{"keyid": key.public.keyid, "sig": key.sign(payload).hex()} for key in keys]
    return {"signed": signed, "signatures": signatures}


def envelope_bytes(envelope: dict[str, Any]) -> bytes:
    """The canonical bytes of a whole envelope, as served and stored."""
    return canonical_json(envelope)


def parse_envelope(raw: bytes | dict[str, Any]) -> Envelope:
    """Parse an envelope's shape; trust is checked by ``ferry.protocol.verify``."""
    data = parse_json(raw) if isinstance(raw, (bytes, str)) else raw
    if not isinstance(data, dict) or set(data) != {"signed", "signatures"}:
        raise MalformedError('an envelope is {"signed": {...}, "signatures": [...]}')
    signed, sigs = data["signed"], data["signatures"]
    if not isinstance(signed, dict) or not isinstance(sigs, list):
        raise MalformedError("envelope: 'signed' must be an object, 'signatures' a list")
    return Envelope(signed, canonical_json(signed), tuple(_parse_signature(s) for s in sigs))


def _parse_signature(item: Any) -> Signature:
    if not isinstance(item, dict) or set(item) != {"keyid", "sig"}:
        raise MalformedError('a signature is {"keyid": hex, "sig": hex}')
    keyid, sig = item["keyid"], item["sig"]
    if not isinstance(keyid, str) or not isinstance(sig, str):
        raise MalformedError("signature keyid and sig must be hex strings")
    try:
        return Signature(keyid, bytes.fromhex(sig))
    except ValueError as exc:
        raise MalformedError("signature is not valid hex") from exc
