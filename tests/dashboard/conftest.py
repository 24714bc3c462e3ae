"""Fixtures: the fleet harness (tmp SQLite app, frozen clock) and a signed-in browser-like client."""

from tests.fleet.conftest import fleet, fleet_template

__all__ = ["fleet", "fleet_template"]
