"""Verified downloads: the happy path, and every way a server can lie to us."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ferry.client import (
    MANIFEST_NAME,
    FerryClient,
    MemoryTrustStore,
    Pin,
    TransferProgress,
    VerificationError,
    Version,
)
from tests.client.helpers import FERRY, Server, push_metadata

Rewrite = Callable[[httpx.Request, bytes], bytes]


def _push(client: FerryClient, model: tuple[str, str], files: list[Path]) -> Version:
    return client.push_version(*model, files, **push_metadata())  # type: ignore[arg-type]


def _lying_client(
    server: Server, path_part: str, rewrite: Rewrite, trust: MemoryTrustStore | None = None
) -> FerryClient:
    """A client whose transport forwards to the real server but rewrites the body of
    responses whose path contains ``path_part`` (a man in the middle, or a bad mirror)."""
    real = httpx.HTTPTransport()

    def handler(request: httpx.Request) -> httpx.Response:
        response = real.handle_request(request)
        body = response.read()
        if path_part not in request.url.path or request.method != "GET":
            return httpx.Response(response.status_code, headers=response.headers, content=body)
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return httpx.Response(response.status_code, headers=headers, content=rewrite(request, body))

    return FerryClient(
        server.url,
        server.admin_token,
        transport=httpx.MockTransport(handler),
        trust=trust or MemoryTrustStore(),
    )


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def test_download_round_trip_pins_root_and_writes_manifest(
    server: Server, admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> None:
    version = _push(admin, model, bundle)
    events: list[TransferProgress] = []
    dest = tmp_path / "out"
    result = admin.download_version(*model, version.version, dest, progress=events.append)
    assert result.version == version.version and result.manifest_sha256 == version.manifest_sha256
    for src in bundle:
        assert (dest / src.name).read_bytes() == src.read_bytes()
    assert result.bytes_downloaded == sum(p.stat().st_size for p in bundle)
    assert events[-1].done == events[-1].total
    manifest = json.loads((dest / MANIFEST_NAME).read_bytes())
    assert manifest["signed"]["version"] == version.version
    mode = stat.S_IMODE((dest / "model.onnx").stat().st_mode)
    assert mode & 0o044, "downloaded files get ordinary permissions, not mkstemp's 0600"
    pin = admin.trust.get(server.url)
    assert pin is not None and len(pin.root_keyids) == 1


def test_download_by_alias_and_again_skips_verified_files(
    admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> None:
    version = _push(admin, model, bundle)
    admin.set_alias(*model, "champion", version.version)
    admin.download_version(*model, "champion", tmp_path / "out")
    events: list[TransferProgress] = []
    again = admin.download_version(*model, "champion", tmp_path / "out", progress=events.append)
    assert again.bytes_downloaded == 0 and all(e.skipped for e in events)


def test_blob_corrupted_on_server_disk_is_refused_with_hash_mismatch(
    server: Server, admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> None:
    version = _push(admin, model, bundle)
    blob = server.blob_path(version.files[0].sha256)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    dest = tmp_path / "out"
    with pytest.raises(VerificationError) as info:
        admin.download_version(*model, version.version, dest)
    assert info.value.code == "hash_mismatch"
    assert _leftovers(dest) == [], "nothing is kept: no file, no .part, no manifest"


def test_blob_with_extra_bytes_is_refused_while_streaming(
    server: Server, admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> None:
    version = _push(admin, model, bundle[1:])
    liar = _lying_client(server, "/blobs/", lambda _r, body: body + b"endless")
    with liar, pytest.raises(VerificationError) as info:
        liar.download_version(*model, version.version, tmp_path / "out")
    assert info.value.code == "length_exceeded"
    assert _leftovers(tmp_path / "out") == []


def test_tampered_manifest_is_refused_with_bad_signature(
    server: Server, admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> None:
    version = _push(admin, model, bundle[1:])

    def grow_file(_: httpx.Request, body: bytes) -> bytes:
        envelope = json.loads(body)
        envelope["signed"]["files"][0]["size"] += 1
        return json.dumps(envelope).encode()

    liar = _lying_client(server, "/manifest", grow_file)
    with liar, pytest.raises(VerificationError) as info:
        liar.download_version(*model, version.version, tmp_path / "out")
    assert info.value.code == "bad_signature"


def test_manifest_of_another_version_is_refused(
    server: Server, admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> None:
    old = _push(admin, model, bundle[1:])
    new = _push(admin, model, bundle)
    old_manifest = admin.manifest_bytes(*model, old.version)
    liar = _lying_client(server, f"/versions/{new.version}/manifest", lambda _r, _b: old_manifest)
    with liar, pytest.raises(VerificationError) as info:
        liar.download_version(*model, new.version, tmp_path / "out")
    assert info.value.code == "manifest_mismatch"


def test_root_key_other_than_the_pinned_one_is_refused(
    server: Server, admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> None:
    version = _push(admin, model, bundle[1:])
    with pytest.raises(VerificationError) as info:
        admin.download_version(*model, version.version, tmp_path / "a", root_keyid="ab" * 32)
    assert info.value.code == "untrusted_key"
    imposter = MemoryTrustStore({server.url: Pin(("cd" * 32,), 1)})
    client = FerryClient(server.url, server.admin_token, trust=imposter)
    with client, pytest.raises(VerificationError) as info:
        client.download_version(*model, version.version, tmp_path / "b")
    assert info.value.code == "untrusted_key"
    assert _leftovers(tmp_path / "a") == [] and _leftovers(tmp_path / "b") == []


def test_incompatible_hardware_is_refused_when_asked(
    admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> None:
    version = _push(admin, model, bundle[1:])
    with pytest.raises(VerificationError) as info:
        admin.download_version(*model, version.version, tmp_path / "out", hardware="jetson-orin")
    assert info.value.code == "incompatible_hardware"
    admin.download_version(*model, version.version, tmp_path / "out", hardware="x86_64")


def test_root_rotation_is_followed_along_the_keyring_chain(
    server: Server, admin: FerryClient, model: tuple[str, str], bundle: list[Path], tmp_path: Path
) -> None:
    version = _push(admin, model, bundle[1:])
    admin.download_version(*model, version.version, tmp_path / "before")
    old_pin = admin.trust.get(server.url)
    assert old_pin is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    subprocess.run(
        [str(FERRY), "keys", "rotate", "--role", "root", "--data-dir", str(server.data_dir)],
        check=True,
        env=env,
        capture_output=True,
    )
    admin.download_version(*model, version.version, tmp_path / "after")
    new_pin = admin.trust.get(server.url)
    assert new_pin is not None and new_pin.keyring_version > old_pin.keyring_version
    assert new_pin.root_keyids != old_pin.root_keyids
