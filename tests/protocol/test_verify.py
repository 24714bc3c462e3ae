"""The verification checklist: every refusal, with its own error code, in order."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta

import pytest

from ferry.protocol.documents import Role, make_keyring
from ferry.protocol.errors import MalformedError, ProtocolError
from ferry.protocol.keys import SigningKey
from ferry.protocol.signing import document_digest, sign_document
from ferry.protocol.timefmt import format_time
from ferry.protocol.verify import (
    FileVerifier,
    SequenceFloor,
    trust_first_keyring,
    verify_desired_state,
    verify_keyring,
    verify_manifest,
)
from tests.support.trust import Authority

DEVICE = "dev-0001"


@pytest.fixture
def auth() -> Authority:
    return Authority()


# --- keyring ----------------------------------------------------------------------


def test_first_keyring_is_trusted_when_self_signed(auth: Authority) -> None:
    keyring = trust_first_keyring(auth.signed_keyring(), auth.now)
    assert keyring.keys_for(Role.BUNDLES).keys() == {auth.bundles.public.keyid}


def test_first_keyring_with_a_pinned_root_refuses_another_root(auth: Authority) -> None:
    with pytest.raises(ProtocolError) as err:
        trust_first_keyring(auth.signed_keyring(), auth.now, {SigningKey.generate().public.keyid})
    assert err.value.code == "untrusted_key"


def test_keyring_rotating_bundles_key_verifies_under_the_same_root(auth: Authority) -> None:
    trusted = auth.keyring()
    auth.bundles, auth.keyring_version = SigningKey.generate(), 2
    new = verify_keyring(auth.signed_keyring(), trusted, auth.now)
    assert new.version == 2 and auth.bundles.public.keyid in new.keys_for(Role.BUNDLES)


def test_root_rotation_needs_old_and_new_root(auth: Authority) -> None:
    trusted = auth.keyring()
    old_root = auth.root
    auth.root, auth.keyring_version = SigningKey.generate(), 2
    assert (
        verify_keyring(
            auth.signed_keyring(signers=[old_root, auth.root]), trusted, auth.now
        ).version
        == 2
    )
    for signers in ([old_root], [auth.root]):
        with pytest.raises(ProtocolError) as err:
            verify_keyring(auth.signed_keyring(signers=signers), trusted, auth.now)
        assert err.value.code == "untrusted_key"


@dataclass
class KeyringAttack:
    name: str
    bend: Callable[[Authority], dict]
    code: str


def _expired(auth: Authority) -> dict:
    auth.keyring_version = 2
    return auth.signed_keyring(expires_in=timedelta(seconds=-1))


def _older(auth: Authority) -> dict:
    auth.keyring_version = 1
    return auth.signed_keyring()


def _stranger_root(auth: Authority) -> dict:
    auth.keyring_version = 3
    return auth.signed_keyring(signers=[SigningKey.generate()])


def _tampered(auth: Authority) -> dict:
    auth.keyring_version = 3
    envelope = auth.signed_keyring()
    envelope["signed"]["version"] = 4
    return envelope


def _same_version_other_keys(auth: Authority) -> dict:
    auth.keyring_version = 2
    auth.director = SigningKey.generate()
    return auth.signed_keyring()


KEYRING_ATTACKS = [
    KeyringAttack("expired keyring (freeze)", _expired, "expired_keyring"),
    KeyringAttack("older keyring (rollback)", _older, "keyring_rollback"),
    KeyringAttack("keyring signed by an unknown root", _stranger_root, "untrusted_key"),
    KeyringAttack("keyring edited after signing", _tampered, "bad_signature"),
    KeyringAttack(
        "different keyring reusing a version", _same_version_other_keys, "keyring_rollback"
    ),
]


@pytest.mark.parametrize("attack", KEYRING_ATTACKS, ids=[a.name for a in KEYRING_ATTACKS])
def test_keyring_attack_is_refused(auth: Authority, attack: KeyringAttack) -> None:
    auth.keyring_version = 2
    trusted = auth.keyring()
    with pytest.raises(ProtocolError) as err:
        verify_keyring(attack.bend(auth), trusted, auth.now)
    assert err.value.code == attack.code


# --- desired state ----------------------------------------------------------------


def _state(auth: Authority, **kwargs) -> dict:
    manifest = auth.manifest({"model.onnx": b"weights"})
    return auth.signed_desired_state(
        auth.desired_state(DEVICE, kwargs.pop("sequence", 5), {"main": manifest}, **kwargs)
    )


def test_desired_state_for_this_device_verifies(auth: Authority) -> None:
    state = verify_desired_state(
        _state(auth),
        auth.keyring(),
        device_id=DEVICE,
        last_sequence=4,
        last_digest=None,
        now=auth.now,
    )
    assert state.sequence == 5 and state.slots["main"].model == "vision/detector"


def test_the_same_desired_state_again_is_not_a_replay(auth: Authority) -> None:
    envelope = _state(auth)
    digest = document_digest(envelope["signed"])
    state = verify_desired_state(
        envelope,
        auth.keyring(),
        device_id=DEVICE,
        last_sequence=5,
        last_digest=digest,
        now=auth.now,
    )
    assert state.sequence == 5


@dataclass
class StateAttack:
    name: str
    envelope: Callable[[Authority], dict]
    code: str


STATE_ATTACKS = [
    StateAttack(
        "signed by a bundles key, not the director",
        lambda a: a.signed_desired_state(a.desired_state(DEVICE, 5, {}), signer=a.bundles),
        "untrusted_key",
    ),
    StateAttack(
        "signed by an unknown key",
        lambda a: a.signed_desired_state(
            a.desired_state(DEVICE, 5, {}), signer=SigningKey.generate()
        ),
        "untrusted_key",
    ),
    StateAttack(
        "directive for another device",
        lambda a: a.signed_desired_state(a.desired_state("dev-9999", 5, {})),
        "wrong_device",
    ),
    StateAttack(
        "expired directive (freeze)",
        lambda a: _state(a, expires_in=timedelta(seconds=-5)),
        "expired_desired_state",
    ),
    StateAttack("older directive replayed", lambda a: _state(a, sequence=3), "sequence_rollback"),
    StateAttack(
        "other directive reusing the sequence", lambda a: _state(a, sequence=4), "sequence_rollback"
    ),
]


@pytest.mark.parametrize("attack", STATE_ATTACKS, ids=[a.name for a in STATE_ATTACKS])
def test_desired_state_attack_is_refused(auth: Authority, attack: StateAttack) -> None:
    with pytest.raises(ProtocolError) as err:
        verify_desired_state(
            attack.envelope(auth),
            auth.keyring(),
            device_id=DEVICE,
            last_sequence=4,
            last_digest="0" * 64,
            now=auth.now,
        )
    assert err.value.code == attack.code


def test_tampered_desired_state_is_a_bad_signature(auth: Authority) -> None:
    envelope = _state(auth)
    envelope["signed"]["sequence"] = 99
    with pytest.raises(ProtocolError) as err:
        verify_desired_state(
            envelope,
            auth.keyring(),
            device_id=DEVICE,
            last_sequence=4,
            last_digest=None,
            now=auth.now,
        )
    assert err.value.code == "bad_signature"


def test_signature_is_checked_before_expiry(auth: Authority) -> None:
    """Fixed order: an expired *and* forged directive is reported as forged."""
    envelope = auth.signed_desired_state(
        auth.desired_state(DEVICE, 5, {}, expires_in=timedelta(seconds=-5)),
        signer=SigningKey.generate(),
    )
    with pytest.raises(ProtocolError) as err:
        verify_desired_state(
            envelope,
            auth.keyring(),
            device_id=DEVICE,
            last_sequence=0,
            last_digest=None,
            now=auth.now,
        )
    assert err.value.code == "untrusted_key"


# --- sequence floor (fast-forward recovery) ------------------------------------------


def test_sequence_floor_holds_while_a_key_that_signed_it_is_still_a_director_key(
    auth: Authority,
) -> None:
    floor = SequenceFloor(2**53 - 1, "ab" * 32, frozenset({auth.director.public.keyid}))
    assert floor.under(auth.keyring()) == floor


def test_sequence_floor_is_void_once_its_signers_are_rotated_out(auth: Authority) -> None:
    floor = SequenceFloor(2**53 - 1, "ab" * 32, frozenset({auth.director.public.keyid}))
    auth.director, auth.keyring_version = SigningKey.generate(), 2
    assert floor.under(auth.keyring()) == SequenceFloor()
    state = auth.desired_state(DEVICE, 1, {})
    envelope = auth.signed_desired_state(state)
    reset = floor.under(auth.keyring())
    assert verify_desired_state(envelope, auth.keyring(), device_id=DEVICE,
                                last_sequence=reset.sequence, last_digest=reset.digest,
                                now=auth.now) == state  # fmt: skip


# --- manifest ---------------------------------------------------------------------


def _verify_manifest(auth: Authority, envelope: dict, expected: str | None = None, **kw) -> object:
    args = {"hardware": "x86_64", "installed_version": None, "allow_downgrade": False} | kw
    return verify_manifest(
        envelope,
        auth.keyring(),
        expected_sha256=expected or document_digest(envelope["signed"]),
        **args,
    )


def test_manifest_verifies(auth: Authority) -> None:
    manifest = auth.manifest({"model.onnx": b"w"}, version=3)
    assert _verify_manifest(auth, auth.signed_manifest(manifest)) == manifest


@pytest.mark.parametrize(
    ("name", "kwargs", "code"),
    [
        ("incompatible hardware", {"hardware": "jetson-orin"}, "incompatible_hardware"),
        ("downgrade", {"installed_version": 5}, "version_downgrade"),
        (
            "same version, different hash",
            {"installed_digests": {("vision/detector", 3): "ab" * 32}, "allow_downgrade": True},
            "version_conflict",
        ),
    ],
)
def test_manifest_refusals(auth: Authority, name: str, kwargs: dict, code: str) -> None:
    envelope = auth.signed_manifest(auth.manifest({"m": b"w"}, version=3))
    with pytest.raises(ProtocolError) as err:
        _verify_manifest(auth, envelope, **kwargs)
    assert err.value.code == code


def test_signed_rollback_may_downgrade(auth: Authority) -> None:
    envelope = auth.signed_manifest(auth.manifest({"m": b"w"}, version=3))
    assert _verify_manifest(auth, envelope, installed_version=5, allow_downgrade=True).version == 3


def test_the_installed_manifest_of_the_same_version_verifies(auth: Authority) -> None:
    envelope = auth.signed_manifest(auth.manifest({"m": b"w"}, version=3))
    known = {("vision/detector", 3): document_digest(envelope["signed"]), ("other/x", 3): "cd" * 32}
    assert _verify_manifest(auth, envelope, installed_digests=known).version == 3


def test_manifest_other_than_directed_is_refused(auth: Authority) -> None:
    envelope = auth.signed_manifest(auth.manifest({"m": b"w"}, version=3))
    with pytest.raises(ProtocolError) as err:
        _verify_manifest(auth, envelope, expected="ab" * 32)
    assert err.value.code == "manifest_mismatch"


def test_manifest_signed_by_director_is_untrusted(auth: Authority) -> None:
    envelope = auth.signed_manifest(auth.manifest({"m": b"w"}), signer=auth.director)
    with pytest.raises(ProtocolError) as err:
        _verify_manifest(auth, envelope)
    assert err.value.code == "untrusted_key"


def test_revoked_bundles_key_is_untrusted_after_rotation(auth: Authority) -> None:
    old = auth.bundles
    auth.bundles, auth.keyring_version = SigningKey.generate(), 2
    envelope = auth.signed_manifest(auth.manifest({"m": b"w"}), signer=old)
    with pytest.raises(ProtocolError) as err:
        _verify_manifest(auth, envelope)
    assert err.value.code == "untrusted_key"


@pytest.mark.parametrize("path", ["../etc/passwd", "/abs", "a//b", "a/./b", "", "c:\\x"])
def test_manifest_with_unsafe_path_is_malformed(auth: Authority, path: str) -> None:
    signed = auth.manifest({"m": b"w"}).to_dict()
    signed["files"][0]["path"] = path
    with pytest.raises(MalformedError):
        _verify_manifest(auth, sign_document(signed, [auth.bundles]))


@pytest.mark.parametrize(
    "bend",
    [
        lambda d: d.pop("files"),
        lambda d: d.update(version="3"),
        lambda d: d.update(version=0),
        lambda d: d.update(_type="keyring"),
        lambda d: d.update(spec_version=2),
        lambda d: d.update(created_at="2026-11-25 03:00:00"),
        lambda d: d["files"][0].update(sha256="XYZ"),
        lambda d: d["files"][0].update(size=-1),
        lambda d: d.update(files=[]),
        lambda d: d.update(hardware="x86_64"),
    ],
    ids=[
        "no files",
        "string version",
        "version 0",
        "wrong type",
        "future spec",
        "bad time",
        "bad sha256",
        "negative size",
        "empty bundle",
        "hardware not a list",
    ],
)
def test_malformed_manifest_is_refused_with_the_field_named(
    auth: Authority, bend: Callable
) -> None:
    signed = copy.deepcopy(auth.manifest({"m": b"w"}).to_dict())
    bend(signed)
    with pytest.raises(MalformedError):
        _verify_manifest(auth, sign_document(signed, [auth.bundles]))


def test_threshold_two_needs_two_distinct_keys(auth: Authority) -> None:
    second = SigningKey.generate()
    keyring = make_keyring(
        1,
        format_time(auth.now + timedelta(days=1)),
        {
            Role.ROOT: [auth.root.public],
            Role.BUNDLES: [auth.bundles.public, second.public],
            Role.DIRECTOR: [auth.director.public],
        },
        {Role.BUNDLES: 2},
    )
    manifest = auth.manifest({"m": b"w"})
    one = sign_document(manifest.to_dict(), [auth.bundles])
    two = sign_document(manifest.to_dict(), [auth.bundles, second])
    digest = document_digest(manifest.to_dict())
    kw = {
        "expected_sha256": digest,
        "hardware": "x86_64",
        "installed_version": None,
        "allow_downgrade": False,
    }
    assert verify_manifest(two, keyring, **kw) == manifest
    doubled = {"signed": one["signed"], "signatures": one["signatures"] * 2}
    with pytest.raises(ProtocolError) as err:
        verify_manifest(doubled, keyring, **kw)
    assert err.value.code == "untrusted_key"


# --- files ------------------------------------------------------------------------


def _feed(data: bytes, size: int, sha: str) -> None:
    verifier = FileVerifier(size, sha)
    for i in range(0, len(data), 3):
        verifier.update(data[i : i + 3])
    verifier.finish()


def test_file_verifier_accepts_the_declared_bytes() -> None:
    import hashlib

    _feed(b"0123456789", 10, hashlib.sha256(b"0123456789").hexdigest())


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"0123456789ABC", "length_exceeded"),
        (b"01234", "truncated"),
        (b"0123456780", "hash_mismatch"),
    ],
    ids=["endless data", "truncated", "wrong hash"],
)
def test_file_verifier_refusals(data: bytes, code: str) -> None:
    import hashlib

    with pytest.raises(ProtocolError) as err:
        _feed(data, 10, hashlib.sha256(b"0123456789").hexdigest())
    assert err.value.code == code


def test_length_is_refused_before_the_extra_bytes_are_hashed() -> None:
    verifier = FileVerifier(4, "0" * 64)
    verifier.update(b"abcd")
    with pytest.raises(ProtocolError):
        verifier.update(b"e")
    assert verifier.received == 4


def test_documents_round_trip(auth: Authority) -> None:
    from ferry.protocol.documents import BundleManifest, DesiredState, Keyring

    manifest = auth.manifest({"a/b.bin": b"x", "c.json": b"{}"}, version=7)
    state = auth.desired_state(DEVICE, 3, {"main": manifest})
    assert BundleManifest.from_dict(manifest.to_dict()) == manifest
    assert DesiredState.from_dict(state.to_dict()) == state
    assert Keyring.from_dict(auth.keyring().to_dict()) == auth.keyring()
    assert replace(manifest, version=8) != manifest
