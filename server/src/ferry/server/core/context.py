"""The app context: what routes, loops and the MQTT part share; stored on ``app.state.ctx``.

It names only interfaces of `ferry.server.core`; the composition root
(`ferry.server.app`) fills it with the implementations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session

from ferry.protocol.documents import Role
from ferry.protocol.keys import SigningKey
from ferry.server.core.blobs import BlobStore
from ferry.server.core.observability import Metrics
from ferry.server.core.settings import Settings

if TYPE_CHECKING:
    from ferry.server.auth.service import Principal


class SigningKeys(Protocol):
    """The server's current signing key per role (`ferry.server.trust.KeySource`)."""

    def key(self, session: Session, role: Role) -> SigningKey: ...


# Token kinds (API tokens ``fry_``, device credentials ``frd_``) plug in here by prefix.
Authenticator = Callable[[Session, str], "Principal | None"]


@dataclass
class AppContext:
    """Everything routes share; stored on ``app.state.ctx``."""

    settings: Settings
    engine: Engine
    read_engine: Engine
    blobs: BlobStore
    keys: SigningKeys
    metrics: Metrics
    authenticators: dict[str, Authenticator] = field(default_factory=dict)
