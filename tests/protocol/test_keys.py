"""Ed25519 keys: RFC 8032 vector, file permissions, and interop with OpenSSL."""

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ferry.protocol.canonical import canonical_json
from ferry.protocol.errors import MalformedError
from ferry.protocol.keys import PublicKey, SigningKey
from ferry.protocol.signing import sign_document

# RFC 8032 §7.1, test 1 (empty message).
RFC_SECRET = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
RFC_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
RFC_SIG = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"


def test_rfc8032_vector() -> None:
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC_SECRET)))
    assert key.public.hex == RFC_PUBLIC
    assert key.sign(b"").hex() == RFC_SIG
    assert PublicKey.from_hex(RFC_PUBLIC).verify(bytes.fromhex(RFC_SIG), b"")


def test_saved_key_is_0600_and_loads_back(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "keys" / "root.pem"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SigningKey.load(path).public == key.public


def test_keyid_is_sha256_of_raw_public_key() -> None:
    import hashlib

    key = SigningKey.generate()
    assert key.public.keyid == hashlib.sha256(key.public.raw).hexdigest()


@pytest.mark.parametrize("text", ["zz", "00" * 31, 7])
def test_bad_public_keys_are_refused(text: object) -> None:
    with pytest.raises(MalformedError):
        PublicKey.from_hex(text)


def test_key_repr_never_shows_secret_material() -> None:
    key = SigningKey.generate()
    assert "PRIVATE" not in repr(key) and key.public.keyid[:12] in repr(key)


@pytest.fixture
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    return path


def _openssl_verify(openssl: str, tmp_path: Path, key: SigningKey, data: bytes, sig: bytes) -> int:
    (tmp_path / "pub.pem").write_bytes(key.public.to_pem())
    (tmp_path / "data.bin").write_bytes(data)
    (tmp_path / "sig.bin").write_bytes(sig)
    result = subprocess.run(
        [
            openssl,
            "pkeyutl",
            "-verify",
            "-rawin",
            "-pubin",
            "-inkey",
            tmp_path / "pub.pem",
            "-in",
            tmp_path / "data.bin",
            "-sigfile",
            tmp_path / "sig.bin",
        ],
        capture_output=True,
        check=False,
    )
    return result.returncode


def test_openssl_verifies_a_ferry_signature_and_refuses_a_tampered_byte(
    openssl: str, tmp_path: Path
) -> None:
    key = SigningKey.generate()
    document = {"_type": "example", "model": "vision/resnet", "version": 3}
    envelope = sign_document(document, [key])
    data = canonical_json(envelope["signed"])
    sig = bytes.fromhex(envelope["signatures"][0]["sig"])
    assert _openssl_verify(openssl, tmp_path, key, data, sig) == 0
    tampered = data.replace(b'"version":3', b'"version":4')
    assert _openssl_verify(openssl, tmp_path, key, tampered, sig) != 0


def test_openssl_reads_a_saved_private_key(openssl: str, tmp_path: Path) -> None:
    key = SigningKey.generate()
    key.save(tmp_path / "k.pem")
    out = subprocess.run(
        [openssl, "pkey", "-in", tmp_path / "k.pem", "-pubout"], capture_output=True, check=True
    )
    assert out.stdout == key.public.to_pem()
