"""Signing keys and the keyring.

Keys live as 0600 PEM files in ``<data_dir>/keys/`` (``root.pem``, ``bundles.pem``,
``director.pem``); retired keys move to ``keys/retired/``. Every keyring version is
stored in the database as its canonical envelope, so every replica serves the same
bytes. Version 1 is made on first start; `rotate` makes version n+1 with a new key
for one role, signed by the current root — and, when the root itself rotates, by
the new root too, so devices that pin the old root can follow the chain.
`renew_if_expiring` (hourly, from the app's lifespan) re-signs the same keys as
n+1 before n runs out.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from ferry.protocol.documents import Keyring, Role, make_keyring
from ferry.protocol.keys import SigningKey
from ferry.protocol.signing import envelope_bytes, sign_document
from ferry.protocol.timefmt import format_time, parse_time, utcnow
from ferry.server.core.db import session_scope
from ferry.server.core.errors import NotFoundError
from ferry.server.core.memo import Memo
from ferry.server.trust.tables import KeyringVersion


def key_path(key_dir: Path, role: Role) -> Path:
    return key_dir / f"{role.value}.pem"


def _load_or_create(key_dir: Path, role: Role) -> SigningKey:
    path = key_path(key_dir, role)
    if path.exists():
        return SigningKey.load(path)
    key = SigningKey.generate()
    key.save(path)
    return key


def _keyring_document(version: int, expiry_days: int, keys: dict[Role, SigningKey]) -> Keyring:
    expires = format_time(utcnow() + timedelta(days=expiry_days))
    return make_keyring(version, expires, {role: [key.public] for role, key in keys.items()})


def _store(session: Session, keyring: Keyring, signers: list[SigningKey]) -> KeyringVersion:
    envelope = sign_document(keyring.to_dict(), signers)
    row = KeyringVersion(
        version=keyring.version,
        expires_at=keyring.expires,
        envelope=envelope_bytes(envelope).decode("utf-8"),
    )
    session.add(row)
    session.flush()
    return row


def latest_version(session: Session) -> int:
    return session.exec(select(func.max(KeyringVersion.version))).one() or 0


def get_envelope(session: Session, version: int | None = None) -> str:
    """The canonical keyring envelope (latest when ``version`` is None)."""
    number = latest_version(session) if version is None else version
    row = session.get(KeyringVersion, number) if number else None
    if row is None:
        raise NotFoundError(f"keyring version {version} does not exist")
    return row.envelope


def ensure_keyring(session: Session, key_dir: Path, expiry_days: int) -> None:
    """First start: create the three keys and sign keyring version 1."""
    key_dir.mkdir(parents=True, exist_ok=True)
    key_dir.chmod(0o700)
    keys = {role: _load_or_create(key_dir, role) for role in Role}
    if latest_version(session) == 0:
        _store(session, _keyring_document(1, expiry_days, keys), [keys[Role.ROOT]])


def rotate(session: Session, key_dir: Path, role: Role, expiry_days: int) -> int:
    """Replace the key of ``role`` and publish keyring version n+1; return n+1."""
    current = {r: SigningKey.load(key_path(key_dir, r)) for r in Role}
    new_key = SigningKey.generate()
    fresh = {**current, role: new_key}
    version = latest_version(session) + 1
    signers = [current[Role.ROOT]] + ([new_key] if role is Role.ROOT else [])
    _store(session, _keyring_document(version, expiry_days, fresh), signers)
    retired = key_dir / "retired"
    retired.mkdir(mode=0o700, exist_ok=True)
    old = current[role]
    old.save(retired / f"{role.value}-v{version - 1}-{old.public.keyid[:12]}.pem")
    new_key.save(key_path(key_dir, role))
    return version


def renew_if_expiring(
    session: Session, key_dir: Path, expiry_days: int, now: datetime
) -> int | None:
    """Re-sign the current keys as keyring n+1 when n has less than a quarter of its lifetime
    left; return n+1, or None when nothing was due.

    Agents fetch the keyring on every sync, so a renewal reaches the fleet long before
    the old version expires — an expired keyring would make every device refuse every
    desired state. Same keys, new version and expiry, signed by the root.
    """
    latest = session.get(KeyringVersion, latest_version(session))
    if latest is None:
        return None
    left = parse_time(latest.expires_at) - now
    if left > timedelta(days=expiry_days) / 4:
        return None
    keys = {role: SigningKey.load(key_path(key_dir, role)) for role in Role}
    version = latest.version + 1
    _store(session, _keyring_document(version, expiry_days, keys), [keys[Role.ROOT]])
    return version


class KeySource:
    """The server's live signing keys, reloaded when a newer keyring appears.

    ``ferry keys rotate`` runs in another process; checking the keyring version
    before signing means a running server switches to the new key without restart.
    """

    def __init__(self, engine: Engine, key_dir: Path) -> None:
        self.engine = engine
        self.key_dir = key_dir
        self._lock = threading.Lock()
        self._version = -1
        self._keys: dict[Role, SigningKey] = {}

    def key(self, session: Session, role: Role) -> SigningKey:
        version = latest_version(session)
        with self._lock:
            if version != self._version:
                self._keys = {r: SigningKey.load(key_path(self.key_dir, r)) for r in Role}
                self._version = version
            return self._keys[role]

    def initialise(self, expiry_days: int) -> None:
        with session_scope(self.engine) as session:
            ensure_keyring(session, self.key_dir, expiry_days)


class ManifestMemo(Memo[str, tuple[bytes, str]]):
    """Signed manifests by digest, ``(envelope bytes, namespace)``: a manifest is immutable
    once signed and never deleted, so an entry never goes stale."""
