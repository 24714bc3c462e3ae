"""Signed manifests and the keyring, checked with ferry.protocol's own verifier."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ferry.cli.demo import wait_until
from ferry.protocol.documents import Role
from ferry.protocol.errors import BadSignatureError, UntrustedKeyError
from ferry.protocol.signing import document_digest, parse_envelope
from ferry.protocol.timefmt import format_time, parse_time, utcnow
from ferry.protocol.verify import trust_first_keyring, verify_keyring, verify_manifest
from ferry.server.app import create_app
from ferry.server.core.db import session_scope
from ferry.server.trust.service import renew_if_expiring
from ferry.server.trust.tables import KeyringVersion
from tests.server.conftest import API, Harness


def _keyring(h: Harness, version: int | None = None) -> bytes:
    path = f"{API}/keyring" if version is None else f"{API}/keyring/{version}"
    r = h.client.get(path)
    assert r.status_code == 200, r.text
    return r.content


def _rotate(h: Harness, role: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ferry.cli.server_cmds",
            "keys",
            "rotate",
            "--role",
            role,
            "--data-dir",
            str(h.settings.data_dir),
        ],
        check=True,
        capture_output=True,
    )


def test_keys_are_private_files(h: Harness) -> None:
    for role in Role:
        path: Path = h.settings.key_dir / f"{role.value}.pem"
        assert path.stat().st_mode & 0o777 == 0o600
    assert h.settings.key_dir.stat().st_mode & 0o777 == 0o700
    assert h.settings.admin_token_path.stat().st_mode & 0o777 == 0o600


def test_manifest_verifies_against_the_published_keyring(h: Harness) -> None:
    version = h.register()
    keyring = trust_first_keyring(_keyring(h), utcnow())
    raw = h.client.get(f"{API}/models/vision/resnet/versions/1/manifest", headers=h.admin).content
    manifest = verify_manifest(
        raw,
        keyring,
        expected_sha256=version["manifest_sha256"],
        hardware="x86_64",
        installed_version=None,
        allow_downgrade=False,
    )
    assert (manifest.full_name, manifest.version) == ("vision/resnet", 1)
    assert [f.to_dict() for f in manifest.files] == version["files"]
    by_digest = h.client.get(f"{API}/manifests/{version['manifest_sha256']}", headers=h.admin)
    assert by_digest.content == raw
    assert document_digest(parse_envelope(raw).signed) == version["manifest_sha256"]


def test_tampered_manifest_fails_verification(h: Harness) -> None:
    version = h.register()
    keyring = trust_first_keyring(_keyring(h), utcnow())
    raw = h.client.get(f"{API}/manifests/{version['manifest_sha256']}", headers=h.admin).content
    forged = raw.replace(b'"version":1', b'"version":7')
    with pytest.raises((BadSignatureError, UntrustedKeyError)):
        verify_manifest(
            forged,
            keyring,
            expected_sha256=document_digest(parse_envelope(forged).signed),
            hardware="x86_64",
            installed_version=None,
            allow_downgrade=False,
        )


def test_bundles_rotation_takes_effect_without_restart(h: Harness) -> None:
    old = h.register()
    _rotate(h, "bundles")
    new = h.register()
    v1 = trust_first_keyring(_keyring(h, 1), utcnow())
    v2 = verify_keyring(_keyring(h), v1, utcnow())
    assert v2.version == 2 and v2.roles[Role.BUNDLES] != v1.roles[Role.BUNDLES]
    raw = h.client.get(f"{API}/manifests/{new['manifest_sha256']}", headers=h.admin).content
    verify_manifest(
        raw,
        v2,
        expected_sha256=new["manifest_sha256"],
        hardware="x86_64",
        installed_version=None,
        allow_downgrade=False,
    )
    old_raw = h.client.get(f"{API}/manifests/{old['manifest_sha256']}", headers=h.admin).content
    with pytest.raises(UntrustedKeyError):
        verify_manifest(
            old_raw,
            v2,
            expected_sha256=old["manifest_sha256"],
            hardware="x86_64",
            installed_version=None,
            allow_downgrade=False,
        )


def test_root_rotation_is_signed_by_old_and_new_root(h: Harness) -> None:
    _rotate(h, "root")
    v1 = trust_first_keyring(_keyring(h, 1), utcnow())
    v2 = verify_keyring(_keyring(h, 2), v1, utcnow())
    assert v2.roles[Role.ROOT] != v1.roles[Role.ROOT]
    assert len(parse_envelope(_keyring(h, 2)).signatures) == 2
    retired = list((h.settings.key_dir / "retired").iterdir())
    assert len(retired) == 1 and retired[0].stat().st_mode & 0o777 == 0o600


def test_unknown_keyring_version_is_404(h: Harness) -> None:
    r = h.client.get(f"{API}/keyring/99")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_a_keyring_near_expiry_is_renewed_with_the_same_keys(h: Harness) -> None:
    first = trust_first_keyring(_keyring(h), utcnow())
    days = h.settings.keyring_expiry_days
    engine = h.app.state.ctx.engine
    with session_scope(engine) as session:
        far = parse_time(first.expires) - timedelta(days=days / 4) - timedelta(hours=1)
        assert renew_if_expiring(session, h.settings.key_dir, days, far) is None
        near = far + timedelta(hours=2)
        assert renew_if_expiring(session, h.settings.key_dir, days, near) == first.version + 1
    renewed = verify_keyring(_keyring(h), first, near)
    assert renewed.version == first.version + 1 and renewed.expires > first.expires
    assert renewed.keys == first.keys


def test_starting_the_server_renews_a_keyring_close_to_expiry(h: Harness) -> None:
    with session_scope(h.app.state.ctx.engine) as session:
        row = session.get(KeyringVersion, 1)
        assert row is not None
        row.expires_at = format_time(utcnow() + timedelta(days=1))
    with TestClient(create_app(h.settings)) as again:  # a restart: the lifespan checks at once
        wait_until(
            lambda: again.get(f"{API}/keyring").json()["signed"]["version"] == 2,
            10,
            "the renewed keyring",
        )
        actions = [e["action"] for e in again.get(f"{API}/audit", headers=h.admin).json()]
    assert "keys.renew" in actions
