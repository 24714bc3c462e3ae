"""Fixtures: the fleet harness (tmp SQLite app, frozen clock) and the server harness factory."""

from tests.fleet.conftest import fleet, fleet_template
from tests.server.conftest import harness_factory, prepared_data_dir

__all__ = ["fleet", "fleet_template", "harness_factory", "prepared_data_dir"]
