"""Alembic migrations for the server schema (run by `ferry.server.core.db.migrate`)."""
