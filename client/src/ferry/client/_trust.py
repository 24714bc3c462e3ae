"""Which keyring to trust: the server's keyring, chained to a pinned root key.

First use pins the root of the server's current keyring (trust on first use),
unless the caller names the root key ids out of band. Later, the current keyring
is accepted directly when its root is still pinned; after a root rotation the
client walks every keyring version from the pinned one, each verified by the one
before (as python-tuf does for root metadata), and then re-pins the new root.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from ferry.client._config import Pin, TrustStore
from ferry.protocol.documents import Keyring, Role
from ferry.protocol.errors import UntrustedKeyError
from ferry.protocol.signing import parse_envelope
from ferry.protocol.verify import check_signatures, trust_first_keyring, verify_keyring

FetchKeyring = Callable[[int | None], bytes]


def trusted_keyring(fetch: FetchKeyring, server: str, store: TrustStore,
                    root_keyids: set[str] | None = None) -> Keyring:
    """The server's current keyring, verified against the pinned (or given) root."""
    now = datetime.now(UTC)
    pin = Pin(tuple(sorted(root_keyids))) if root_keyids else store.get(server)
    latest = fetch(None)
    if pin is None:
        keyring = trust_first_keyring(latest, now)
    elif set(_root_of(latest)) <= set(pin.root_keyids):
        keyring = trust_first_keyring(latest, now, set(pin.root_keyids))
    else:
        keyring = _walk(fetch, pin, latest, now)
    if root_keyids is None:
        new_pin = Pin(tuple(sorted(keyring.roles[Role.ROOT].keyids)), keyring.version)
        if new_pin != pin:
            store.pin(server, new_pin)
    return keyring


def _root_of(raw: bytes) -> tuple[str, ...]:
    return Keyring.from_dict(parse_envelope(raw).signed).roles[Role.ROOT].keyids


def _walk(fetch: FetchKeyring, pin: Pin, latest: bytes, now: datetime) -> Keyring:
    """Chain from the pinned keyring version up to the latest, one rotation at a time."""
    target = Keyring.from_dict(parse_envelope(latest).signed).version
    trusted = _pinned_keyring(fetch(pin.keyring_version), pin)
    for version in range(trusted.version + 1, target):
        trusted = verify_keyring(fetch(version), trusted, None)
    return verify_keyring(latest, trusted, now)


def _pinned_keyring(raw: bytes, pin: Pin) -> Keyring:
    """The keyring version the pin was taken from, signed by the pinned root (expiry not
    checked: it is only a step of the walk)."""
    envelope = parse_envelope(raw)
    keyring = Keyring.from_dict(envelope.signed)
    root = keyring.roles[Role.ROOT]
    if not set(root.keyids) <= set(pin.root_keyids):
        raise UntrustedKeyError(f"keyring version {keyring.version} is not rooted in the pinned "
                                f"root key; if the server's root was legitimately replaced, "
                                f"remove its pin from the config file")
    check_signatures(envelope, keyring.keys_for(Role.ROOT), root.threshold, "keyring")
    return keyring
