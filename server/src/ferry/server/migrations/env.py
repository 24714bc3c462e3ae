"""Alembic environment: online migrations against the URL set by `ferry.server.core.db`."""

from alembic import context
from sqlalchemy import create_engine, pool
from sqlmodel import SQLModel

import ferry.server.metadata  # noqa: F401  (fills SQLModel.metadata for autogenerate)

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if url is None:  # set by ferry.server.core.db; alembic.ini itself names no database
        raise RuntimeError("sqlalchemy.url is not set: run migrations through ferry.server.core.db")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
