"""TrustedState: the keyring chain a device or client trusts, and Verified documents."""

from __future__ import annotations

import pytest

from ferry.protocol.errors import ProtocolError
from ferry.protocol.keys import SigningKey
from ferry.protocol.signing import document_digest, envelope_bytes
from ferry.protocol.trust import TrustedState
from ferry.protocol.verify import SequenceFloor
from tests.support.trust import Authority


def _rotate_root(auth: Authority, version: int) -> dict:
    old, auth.root, auth.keyring_version = auth.root, SigningKey.generate(), version
    return auth.signed_keyring(signers=[old, auth.root])


def test_refresh_walks_every_version_and_moves() -> None:
    auth = Authority()
    trust = TrustedState.first(auth.signed_keyring(), auth.now)
    published = {v: _rotate_root(auth, v) for v in (2, 3, 4)}
    fetched: list[int] = []

    def fetch(version: int) -> bytes:
        fetched.append(version)
        return envelope_bytes(published[version])

    assert trust.refresh_keyring(envelope_bytes(published[4]), fetch, auth.now)
    assert (trust.keyring.version, fetched) == (4, [2, 3])
    assert not trust.refresh_keyring(envelope_bytes(published[4]), fetch, auth.now)


def test_a_refused_step_leaves_the_trusted_keyring_unchanged() -> None:
    auth = Authority()
    trust = TrustedState.first(auth.signed_keyring(), auth.now)
    good = _rotate_root(auth, 2)
    auth.keyring_version = 3
    forged = auth.signed_keyring(signers=[SigningKey.generate()])
    with pytest.raises(ProtocolError) as err:
        trust.refresh_keyring(envelope_bytes(forged), lambda v: envelope_bytes(good), auth.now)
    assert err.value.code == "untrusted_key" and trust.keyring.version == 1


def test_pinned_refuses_a_keyring_rooted_elsewhere() -> None:
    auth = Authority()
    with pytest.raises(ProtocolError) as err:
        TrustedState.pinned(auth.signed_keyring(), {SigningKey.generate().public.keyid})
    assert err.value.code == "untrusted_key"


def test_verified_documents_carry_their_envelope_digest_and_signers() -> None:
    auth = Authority()
    trust = TrustedState.first(auth.signed_keyring(), auth.now)
    envelope = auth.signed_manifest(auth.manifest({"m": b"w"}, version=2))
    digest = document_digest(envelope["signed"])
    verified = trust.verify_manifest(envelope_bytes(envelope), expected_sha256=digest,
                                     hardware=None, installed_version=None,
                                     allow_downgrade=False)  # fmt: skip
    assert verified.digest == digest and verified.envelope_bytes == envelope_bytes(envelope)
    assert verified.signers == {auth.bundles.public.keyid}
    state = auth.signed_desired_state(auth.desired_state("dev-1", 5, {"main": verified.document}))
    directive = trust.verify_desired_state(state, device_id="dev-1", floor=SequenceFloor(),
                                           now=auth.now)  # fmt: skip
    assert SequenceFloor.accepted(directive) == SequenceFloor(
        5, document_digest(state["signed"]), frozenset({auth.director.public.keyid})
    )
