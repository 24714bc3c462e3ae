"""The attack suite: the simulator serves each attack, the agent refuses it and keeps its model.

Every case starts from a device running v1 (installed honestly), bends the
repository, runs one update cycle and asserts three things: the refusal's code
arrived in a ``failed`` status report, the installed version folder and the
``current`` link are unchanged byte for byte, and nothing is left in staging.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest

from ferry.protocol import endpoints
from ferry.protocol.keys import SigningKey
from ferry.protocol.signing import envelope_bytes, sign_document
from tests.agent.conftest import Device
from tests.support.device_repository import CORRUPT, ENDLESS, TRUNCATED, Bundle, DeviceRepository

V1_FILES = {"model.onnx": b"\x01" * 300_000, "labels.txt": b"cat\ndog\n"}
V2_FILES = {"model.onnx": b"\x02" * 300_000, "labels.txt": b"cat\ndog\nbird\n"}
DEVICE_SLOT = "device"


@dataclass(frozen=True)
class Attack:
    """One attack: how to bend the repository, the code expected, the slot it is reported on."""

    name: str
    code: str
    slot: str
    serve: Callable[[DeviceRepository, Bundle], None]


def _stranger_signs_desired_state(repo: DeviceRepository, v1: Bundle) -> None:
    v2 = repo.add_bundle(V2_FILES, version=2)
    repo.target({"main": v2}, signer=SigningKey.generate())


def _stranger_signs_manifest(repo: DeviceRepository, v1: Bundle) -> None:
    v2 = repo.add_bundle(V2_FILES, version=2, signer=SigningKey.generate())
    repo.target({"main": v2})


def _tampered_desired_state(repo: DeviceRepository, v1: Bundle) -> None:
    v2 = repo.add_bundle(V2_FILES, version=2)
    envelope = repo.authority.signed_desired_state(repo.desired_state({"main": v1}))
    envelope["signed"]["slots"]["main"] = repo.desired_state({"main": v2}).to_dict()["slots"][
        "main"
    ]
    repo.serve_desired(envelope_bytes(envelope))


def _expired_keyring(repo: DeviceRepository, v1: Bundle) -> None:
    repo.authority.keyring_version = 2
    repo.publish_keyring(repo.authority.signed_keyring(expires_in=timedelta(seconds=-60)), 2)
    repo.target({"main": repo.add_bundle(V2_FILES, version=2)})


def _expired_desired_state(repo: DeviceRepository, v1: Bundle) -> None:
    repo.target({"main": repo.add_bundle(V2_FILES, version=2)}, expires_in=timedelta(seconds=-60))


def _replayed_desired_state(repo: DeviceRepository, v1: Bundle) -> None:
    # A validly signed directive for v2, but with a sequence below the accepted one.
    v2 = repo.add_bundle(V2_FILES, version=2)
    repo.target({"main": v2}, sequence=1)


def _for_another_device(repo: DeviceRepository, v1: Bundle) -> None:
    repo.target({"main": repo.add_bundle(V2_FILES, version=2)}, device_id="dev-9999")


def _incompatible_hardware(repo: DeviceRepository, v1: Bundle) -> None:
    repo.target({"main": repo.add_bundle(V2_FILES, version=2, hardware=("jetson-orin",))})


def _blob_attack(mode: str) -> Callable[[DeviceRepository, Bundle], None]:
    def serve(repo: DeviceRepository, v1: Bundle) -> None:
        v2 = repo.add_bundle(V2_FILES, version=2)
        entry = next(e for e in v2.manifest.files if e.path == "model.onnx")
        repo.blob_mode[entry.sha256] = mode
        repo.target({"main": v2})

    return serve


def _manifest_swapped(repo: DeviceRepository, v1: Bundle) -> None:
    v2 = repo.add_bundle(V2_FILES, version=2)
    v3 = repo.add_bundle({"model.onnx": b"\x03" * 1000}, version=3)
    repo.manifests[v2.digest] = repo.manifests[v3.digest]  # a valid manifest, not the directed one
    repo.target({"main": v2})


def _same_version_different_bytes(repo: DeviceRepository, v1: Bundle) -> None:
    # A second, validly signed manifest for the installed version 1 with other files.
    repo.target({"main": repo.add_bundle(V2_FILES, version=1)})


def _oversized(path: str) -> Callable[[DeviceRepository, Bundle], None]:
    def serve(repo: DeviceRepository, v1: Bundle) -> None:
        repo.target({"main": repo.add_bundle(V2_FILES, version=2)})
        repo.overrides[path] = b'{"signed": {"pad": "' + b"x" * (2 << 20) + b'"}}'

    return serve


ATTACKS = [
    Attack(
        "untrusted_key_desired_state", "untrusted_key", DEVICE_SLOT, _stranger_signs_desired_state
    ),
    Attack("untrusted_key_manifest", "untrusted_key", "main", _stranger_signs_manifest),
    Attack("bad_signature", "bad_signature", DEVICE_SLOT, _tampered_desired_state),
    Attack("expired_keyring", "expired_keyring", DEVICE_SLOT, _expired_keyring),
    Attack("expired_desired_state", "expired_desired_state", DEVICE_SLOT, _expired_desired_state),
    Attack("replayed_desired_state", "sequence_rollback", DEVICE_SLOT, _replayed_desired_state),
    Attack("directive_for_another_device", "wrong_device", DEVICE_SLOT, _for_another_device),
    Attack("incompatible_hardware", "incompatible_hardware", "main", _incompatible_hardware),
    Attack("endless_data", "length_exceeded", "main", _blob_attack(ENDLESS)),
    Attack("wrong_hash", "hash_mismatch", "main", _blob_attack(CORRUPT)),
    Attack("truncated_file", "truncated", "main", _blob_attack(TRUNCATED)),
    Attack("manifest_swapped", "manifest_mismatch", "main", _manifest_swapped),
    Attack("oversized_keyring", "document_too_large", DEVICE_SLOT, _oversized(endpoints.KEYRING)),
    Attack(
        "oversized_desired_state",
        "document_too_large",
        DEVICE_SLOT,
        _oversized(endpoints.DESIRED_STATE),
    ),
    Attack(
        "same_version_different_bytes", "version_conflict", "main", _same_version_different_bytes
    ),
]


@pytest.fixture
def running_v1(device: Device, repo: DeviceRepository) -> Bundle:
    v1 = repo.add_bundle(V1_FILES, version=1)
    repo.target({"main": v1})
    device.sync()
    assert device.current_version() == 1 and repo.states()[-1] == "committed"
    return v1


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_refused_and_the_model_kept(
    attack: Attack, device: Device, repo: DeviceRepository, running_v1: Bundle
) -> None:
    before = device.models()
    attack.serve(repo, running_v1)
    device.sync()
    refusal = repo.reports_for(attack.slot)[-1]
    assert (refusal["state"], refusal["error_code"]) == ("failed", attack.code), refusal
    assert device.models() == before
    assert device.current_version() == 1


def test_downgrade_is_refused_unless_signed_as_rollback(
    device: Device, repo: DeviceRepository, running_v1: Bundle
) -> None:
    v2 = repo.add_bundle(V2_FILES, version=2)
    repo.target({"main": v2})
    device.sync()
    before = device.models()
    repo.target({"main": running_v1})
    device.sync()
    assert (repo.states()[-1], repo.reports_for("main")[-1]["error_code"]) == (
        "failed",
        "version_downgrade",
    )
    assert device.models() == before and device.current_version() == 2
    repo.target({"main": running_v1}, allow_downgrade=True)
    device.sync()
    assert repo.states()[-1] == "committed" and device.current_version() == 1


def test_same_version_with_different_bytes_is_refused_even_after_it_was_pruned(
    device: Device, repo: DeviceRepository
) -> None:
    """v1 installed, then v2 and v3 (v1's folder pruned): another v1, even as a signed rollback,
    is still refused, while the genuine v1 may be rolled back to."""
    v1 = repo.add_bundle(V1_FILES, version=1)
    for bundle in (v1, repo.add_bundle(V2_FILES, version=2)):
        repo.target({"main": bundle})
        device.sync()
    repo.target({"main": repo.add_bundle({"model.onnx": b"\x03" * 1000}, version=3)})
    device.sync()
    assert device.current_version() == 3
    assert not any(name.startswith("v1-") for name in os.listdir(device.slot().versions))
    before = device.models()
    impostor = repo.add_bundle({"model.onnx": b"\x66" * 1000}, version=1)
    repo.target({"main": impostor}, allow_downgrade=True)
    device.sync()
    refusal = repo.reports_for("main")[-1]
    assert (refusal["state"], refusal["error_code"]) == ("failed", "version_conflict")
    assert device.models() == before
    repo.target({"main": v1}, allow_downgrade=True)
    device.sync()
    assert repo.states()[-1] == "committed" and device.current_version() == 1


def test_replaying_the_exact_bytes_of_an_older_directive_is_refused(
    device: Device, repo: DeviceRepository, running_v1: Bundle
) -> None:
    old_directive = repo.desired
    assert old_directive is not None
    repo.target({"main": repo.add_bundle(V2_FILES, version=2)})
    device.sync()
    before = device.models()
    repo.serve_desired(old_directive)
    device.sync()
    assert repo.reports_for(DEVICE_SLOT)[-1]["error_code"] == "sequence_rollback"
    assert device.models() == before and device.current_version() == 2


def test_endless_data_is_cut_off_at_the_declared_size(
    device: Device, repo: DeviceRepository, running_v1: Bundle
) -> None:
    _blob_attack(ENDLESS)(repo, running_v1)
    device.sync()
    report = repo.reports_for("main")[-1]
    declared = len(V2_FILES["model.onnx"])
    sha = next(
        e.sha256
        for e in repo.authority.manifest(V2_FILES, version=2).files
        if e.path == "model.onnx"
    )
    assert report["error_code"] == "length_exceeded"
    # The agent stored at most the declared bytes and hung up: the server could push
    # only what the socket buffers hold, not the 1 GiB it would send to a reader.
    assert report["bytes_downloaded"] <= declared + len(V2_FILES["labels.txt"])
    assert repo.bytes_sent[sha] < declared + (32 << 20)


def test_a_refused_directive_is_reported_once_not_every_poll(
    device: Device, repo: DeviceRepository, running_v1: Bundle
) -> None:
    _blob_attack(CORRUPT)(repo, running_v1)
    for _ in range(3):
        device.sync()
    assert [r["error_code"] for r in repo.reports_for("main")].count("hash_mismatch") == 1
    _for_another_device(repo, running_v1)
    for _ in range(3):
        device.sync()
    assert [r["error_code"] for r in repo.reports_for(DEVICE_SLOT)].count("wrong_device") == 1
    _oversized(endpoints.DESIRED_STATE)(repo, running_v1)
    for _ in range(3):
        device.sync()
    codes = [r["error_code"] for r in repo.reports_for(DEVICE_SLOT)]
    assert codes.count("document_too_large") == 1


def test_revoked_bundles_key_stops_verifying_after_a_keyring_update(
    device: Device, repo: DeviceRepository, running_v1: Bundle
) -> None:
    old_bundles = repo.authority.bundles
    repo.authority.bundles, repo.authority.keyring_version = SigningKey.generate(), 2
    repo.publish_keyring(repo.authority.signed_keyring(), 2)
    repo.target({"main": repo.add_bundle(V2_FILES, version=2, signer=old_bundles)})
    device.sync()
    assert repo.reports_for("main")[-1]["error_code"] == "untrusted_key"
    assert device.agent.trust.keyring.version == 2


def test_root_rotation_is_followed_version_by_version(
    device: Device, repo: DeviceRepository, running_v1: Bundle
) -> None:
    auth = repo.authority
    for version in (2, 3):
        old_root, auth.root, auth.keyring_version = auth.root, SigningKey.generate(), version
        repo.publish_keyring(auth.signed_keyring(signers=[old_root, auth.root]), version)
    repo.target({"main": repo.add_bundle(V2_FILES, version=2)})
    device.sync()
    assert device.current_version() == 2 and device.agent.trust.keyring.version == 3
    walked = [path for method, path, _ in repo.requests if path.endswith("/keyring/2")]
    assert walked, "the agent must fetch the intermediate keyring"


def test_keyring_signed_only_by_a_new_root_is_refused(
    device: Device, repo: DeviceRepository, running_v1: Bundle
) -> None:
    auth = repo.authority
    auth.root, auth.keyring_version = SigningKey.generate(), 2
    repo.publish_keyring(sign_document(auth.keyring().to_dict(), [auth.root]), 2)
    device.sync()
    assert repo.reports_for(DEVICE_SLOT)[-1]["error_code"] == "untrusted_key"
    assert device.agent.trust.keyring.version == 1


# --- fast-forward recovery: a compromised director key inflated the sequence --------------

INFLATED = 2**53 - 1


def _inflate_with_stolen_director_key(repo: DeviceRepository, v1: Bundle) -> bytes:
    """The attacker signs, with the stolen director key, a directive at sequence 2^53-1."""
    return repo.target({"main": v1}, sequence=INFLATED)


def _rotate_director(repo: DeviceRepository, version: int = 2) -> None:
    """The operator's answer: a root-signed keyring with a new director key, old one revoked."""
    repo.authority.director, repo.authority.keyring_version = SigningKey.generate(), version
    repo.publish_keyring(repo.authority.signed_keyring(), version)


def test_inflated_sequence_from_a_compromised_director_key_is_recovered_by_rotation(
    device: Device, repo: DeviceRepository, running_v1: Bundle
) -> None:
    forged = _inflate_with_stolen_director_key(repo, running_v1)
    device.sync()
    assert device.agent.trust.last_sequence == INFLATED  # validly signed: the device took it
    v2 = repo.add_bundle(V2_FILES, version=2)
    repo.target({"main": v2})  # the genuine server, next sequence, same (stolen) key
    device.sync()
    assert repo.reports_for(DEVICE_SLOT)[-1]["error_code"] == "sequence_rollback"
    assert device.current_version() == 1

    _rotate_director(repo)
    repo.target({"main": v2})  # signed by the new director key, an ordinary sequence
    device.sync()
    assert device.current_version() == 2 and repo.states()[-1] == "committed"
    assert device.agent.trust.last_sequence == repo.sequence < INFLATED

    before = device.models()
    repo.serve_desired(forged)  # the revoked key's high-sequence document, again
    device.sync()
    assert repo.reports_for(DEVICE_SLOT)[-1]["error_code"] == "untrusted_key"
    assert device.models() == before and device.agent.trust.last_sequence == repo.sequence


def test_the_floor_survives_an_agent_restart_and_resets_only_with_the_rotation(
    device: Device, repo: DeviceRepository, running_v1: Bundle
) -> None:
    _inflate_with_stolen_director_key(repo, running_v1)
    device.sync()
    device.close()
    device._agent = None  # a restarted agent reads trust.json again
    v2 = repo.add_bundle(V2_FILES, version=2)
    repo.target({"main": v2})
    device.sync()
    assert repo.reports_for(DEVICE_SLOT)[-1]["error_code"] == "sequence_rollback"
    _rotate_director(repo)
    repo.target({"main": v2})
    device.close()
    device._agent = None
    device.sync()
    assert device.current_version() == 2


@pytest.mark.parametrize("change", ["bundles key rotated", "second director key added"])
def test_a_keyring_change_that_keeps_the_signing_director_key_keeps_the_floor(
    change: str, device: Device, repo: DeviceRepository, running_v1: Bundle
) -> None:
    old_directive = repo.desired
    assert old_directive is not None
    repo.target({"main": repo.add_bundle(V2_FILES, version=2)})
    device.sync()
    auth, extra = repo.authority, SigningKey.generate()
    if change == "bundles key rotated":
        auth.bundles = extra
    auth.keyring_version = 2
    keyring = auth.keyring().to_dict()
    if change == "second director key added":
        keyring["keys"][extra.public.keyid] = {"keytype": "ed25519", "public": extra.public.hex}
        keyring["roles"]["director"]["keyids"].append(extra.public.keyid)
    repo.publish_keyring(sign_document(keyring, [auth.root]), 2)
    repo.serve_desired(old_directive)
    device.sync()
    assert device.agent.trust.keyring.version == 2
    assert repo.reports_for(DEVICE_SLOT)[-1]["error_code"] == "sequence_rollback"
    assert device.current_version() == 2


def test_re_enrolment_does_not_keep_the_sequence_floor(
    device: Device, repo: DeviceRepository, running_v1: Bundle
) -> None:
    _inflate_with_stolen_director_key(repo, running_v1)
    device.sync()
    device.close()
    device.enroll()
    device._agent = None
    repo.target({"main": repo.add_bundle(V2_FILES, version=2)})
    device.sync()
    assert device.current_version() == 2 and device.agent.trust.last_sequence == repo.sequence
