"""The fleet fixtures (tmp SQLite app, frozen clock, recording notifier) for rollout tests."""

from tests.fleet.conftest import fleet, fleet_template

__all__ = ["fleet", "fleet_template"]
