"""The delta descriptor: a signable document of integers and hex digests."""

from __future__ import annotations

import pytest

from ferry.protocol.canonical import canonical_json
from ferry.protocol.delta import DeltaDescriptor
from ferry.protocol.errors import MalformedError
from ferry.protocol.keys import SigningKey
from ferry.protocol.signing import parse_envelope, sign_document

DESCRIPTOR = DeltaDescriptor(
    from_manifest="a" * 64, to_manifest="b" * 64, path="model.safetensors",
    from_sha256="c" * 64, to_sha256="d" * 64, to_size=90_000_000,
    delta_sha256="e" * 64, delta_size=30_000_000,
)  # fmt: skip


def test_round_trips_and_signs_with_a_bundles_key() -> None:
    data = DESCRIPTOR.to_dict()
    assert DeltaDescriptor.from_dict(data) == DESCRIPTOR
    key = SigningKey.generate()
    envelope = parse_envelope(sign_document(data, [key]))
    assert key.public.verify(envelope.signatures[0].sig, canonical_json(data))
    assert DeltaDescriptor.from_dict(envelope.signed) == DESCRIPTOR


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("delta_size", 1.5),
        ("delta_size", -1),
        ("to_size", True),
        ("delta_sha256", "E" * 64),
        ("from_manifest", "a" * 63),
        ("path", "../etc/passwd"),
        ("format", "xdelta3"),
        ("_type", "bundle-manifest"),
        ("spec_version", 2),
    ],
)
def test_refuses_bad_fields(field: str, value: object) -> None:
    with pytest.raises(MalformedError):
        DeltaDescriptor.from_dict({**DESCRIPTOR.to_dict(), field: value})


def test_refuses_unknown_and_missing_fields() -> None:
    with pytest.raises(MalformedError):
        DeltaDescriptor.from_dict({**DESCRIPTOR.to_dict(), "extra": 1})
    data = DESCRIPTOR.to_dict()
    del data["delta_size"]
    with pytest.raises(MalformedError):
        DeltaDescriptor.from_dict(data)


def test_public_api_is_sorted_and_importable() -> None:
    from ferry.protocol import delta
    from ferry.server import deltas

    def isort_style(name: str) -> tuple[int, str]:  # CONSTANTS, Classes, functions
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    for module in (delta, deltas):
        assert module.__all__ == sorted(module.__all__, key=isort_style)
        assert all(hasattr(module, name) for name in module.__all__)
