"""Fixtures: a fleet harness on tmp SQLite with namespace ``vision`` and model ``vision/det``.

The migrated, keyed data directory is built once per session and copied per test:
each test still gets its own database, without paying for migrations again.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.harness import Fleet, build_fleet


@pytest.fixture(scope="session")
def fleet_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("fleet-template") / "data"
    harness, client = build_fleet(data)
    with client:
        harness.namespace("vision")
        harness.model("vision", "det")
    return data


@pytest.fixture
def fleet(tmp_path: Path, fleet_template: Path) -> Iterator[Fleet]:
    data = tmp_path / "data"
    shutil.copytree(fleet_template, data)
    harness, client = build_fleet(data)
    with client:
        yield harness
