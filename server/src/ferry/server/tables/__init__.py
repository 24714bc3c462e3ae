"""SQLModel tables, one module per concept.

Importing this package registers every table on ``SQLModel.metadata`` (Alembic's
``env.py`` and the tests rely on that). Other parts add their own module here and
one import line below; their schema changes go in ``server/migrations/versions``.
"""

from ferry.server.tables import audit, fleet, registry, rollouts, tokens, trust, webhooks

__all__ = ["audit", "fleet", "registry", "rollouts", "tokens", "trust", "webhooks"]
