"""Which keyring to trust: the server's keyring, chained to a pinned root key.

First use pins the root of the server's current keyring (trust on first use),
unless the caller names the root key ids out of band. Later, the current keyring
is accepted directly when its root is still pinned; after a root rotation the
client walks every keyring version from the pinned one, each verified by the one
before (as python-tuf does for root metadata), and then re-pins the new root.
The walk and every check are ``ferry.protocol.trust.TrustedState``'s, the same
as the device agent's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from ferry.client._config import Pin, TrustStore
from ferry.protocol.documents import Keyring, Role
from ferry.protocol.errors import UntrustedKeyError
from ferry.protocol.signing import parse_envelope
from ferry.protocol.trust import TrustedState

FetchKeyring = Callable[[int | None], bytes]


def trusted_state(
    fetch: FetchKeyring, server: str, store: TrustStore, root_keyids: set[str] | None = None
) -> TrustedState:
    """The server's current keyring, verified against the pinned (or given) root."""
    now = datetime.now(UTC)
    pin = Pin(tuple(sorted(root_keyids))) if root_keyids else store.get(server)
    latest = fetch(None)
    if pin is None:
        trust = TrustedState.first(latest, now)
    elif set(_root_of(latest)) <= set(pin.root_keyids):
        trust = TrustedState.first(latest, now, set(pin.root_keyids))
    else:
        trust = _pinned(fetch(pin.keyring_version), pin)
        trust.refresh_keyring(latest, fetch, now)
    if root_keyids is None:
        keyring = trust.keyring
        new_pin = Pin(tuple(sorted(keyring.roles[Role.ROOT].keyids)), keyring.version)
        if new_pin != pin:
            store.pin(server, new_pin)
    return trust


def _root_of(raw: bytes) -> tuple[str, ...]:
    return Keyring.from_dict(parse_envelope(raw).signed).roles[Role.ROOT].keyids


def _pinned(raw: bytes, pin: Pin) -> TrustedState:
    """The keyring version the pin was taken from, signed by the pinned root (expiry not
    checked: it is only a step of the walk)."""
    try:
        return TrustedState.pinned(raw, pin.root_keyids)
    except UntrustedKeyError as exc:
        raise UntrustedKeyError(
            f"{exc}; if the server's root was legitimately replaced, "
            f"remove its pin from the config file"
        ) from exc
