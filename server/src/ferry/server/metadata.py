"""Every concept's tables, imported so that ``SQLModel.metadata`` is complete.

Alembic's ``env.py``, `ferry.server.app` and the tests import this module; a new
concept adds its ``tables`` module here and its schema changes go in
``migrations/versions``. Nothing else may import it: concepts import only the
tables they use.
"""

from ferry.server.audit import tables as audit
from ferry.server.auth import tables as tokens
from ferry.server.fleet import tables as fleet
from ferry.server.registry import tables as registry
from ferry.server.rollouts import tables as rollouts
from ferry.server.trust import tables as trust
from ferry.server.webhooks import tables as webhooks

__all__ = ["audit", "fleet", "registry", "rollouts", "tokens", "trust", "webhooks"]
