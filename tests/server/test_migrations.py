"""Alembic migrations run from code on SQLite and PostgreSQL, go down and up again,
and leave the schema exactly as the SQLModel tables describe it; the registry then
works on PostgreSQL, including concurrent version numbering."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

from ferry.server.core.db import alembic_config, migrate
from tests.server.conftest import API, Harness, version_body

EXPECTED_TABLES = {
    "api_token",
    "namespace",
    "registered_model",
    "model_version",
    "version_tag",
    "model_alias",
    "keyring_version",
    "signed_manifest",
    "audit_entry",
    "audit_head",
    "webhook_subscription",
    "event_outbox",
    "webhook_delivery",
}


def _check_round_trip(url: str) -> None:
    migrate(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        assert EXPECTED_TABLES <= set(inspect(conn).get_table_names())
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
    command.downgrade(alembic_config(url), "base")
    with engine.connect() as conn:
        assert not EXPECTED_TABLES & set(inspect(conn).get_table_names())
    migrate(url)
    migrate(url)  # idempotent at head
    with engine.connect() as conn:
        assert EXPECTED_TABLES <= set(inspect(conn).get_table_names())
    engine.dispose()


def test_migrations_on_sqlite(tmp_path: Path) -> None:
    _check_round_trip(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.postgres
def test_migrations_on_postgres(pg_url: str) -> None:
    _check_round_trip(pg_url)


@pytest.mark.postgres
def test_registry_on_postgres(pg_url: str, harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory(database_url=pg_url)
    h.namespace()
    h.model()
    numbers: list[int] = []

    def worker() -> None:
        for _ in range(3):
            data = secrets.token_bytes(16)
            sha = hashlib.sha256(data).hexdigest()
            h.client.put(f"{API}/blobs/{sha}", content=data, headers=h.admin)
            r = h.client.post(
                f"{API}/models/vision/resnet/versions",
                headers=h.admin,
                json=version_body(
                    [{"path": "m", "sha256": sha, "size": 16}], metrics={"accuracy": 0.95}
                ),
            )
            assert r.status_code == 201, r.text
            numbers.append(r.json()["version"])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(1, 13))
    found = h.client.get(f"{API}/versions?metric=accuracy>=0.9&name=resnet", headers=h.admin)
    assert len(found.json()) == 12
    assert h.client.get(f"{API}/audit/verify", headers=h.admin).json()["ok"] is True


def test_a_migration_applied_under_running_replicas_bumps_the_fleet_epoch(tmp_path: Path) -> None:
    """Migrations write through Alembic, not sessions: without a bump, replicas polling the
    epoch would keep serving check-ins cached from the old schema and data."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate(url)
    command.downgrade(alembic_config(url), "-1")
    engine = create_engine(url)
    with engine.connect() as conn:
        before = conn.execute(text("SELECT value FROM fleet_epoch")).scalar_one()
    migrate(url)
    with engine.connect() as conn:
        after = conn.execute(text("SELECT value FROM fleet_epoch")).scalar_one()
    migrate(url)  # nothing to apply: no bump
    with engine.connect() as conn:
        assert conn.execute(text("SELECT value FROM fleet_epoch")).scalar_one() == after
    engine.dispose()
    assert after == before + 1
