"""Sign a TestClient in to the dashboard and read what it shows."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from tests.fleet.harness import Fleet
from tests.rollouts.helpers import by_wave


def secret_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def browser(
    fleet: Fleet, headers: dict[str, str], base_url: str = "http://testserver"
) -> TestClient:
    """A fresh client (its own cookie jar) signed in with the token in ``headers``."""
    client = TestClient(fleet.app, base_url=base_url)
    r = client.post("/ui/login", data={"token": secret_of(headers)}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def live_rollout(fleet: Fleet, devices: int = 4, **body: Any) -> tuple[dict[str, Any], list[Any]]:
    """A running rollout of vision/det v1 over ``devices`` devices, one tick in."""
    agents = fleet.devices(devices)
    fleet.version()
    rollout = fleet.rollout(**body)
    fleet.tick()
    return rollout, agents


def first_agent(rollout: dict[str, Any], agents: list[Any]) -> Any:
    """A device of the first wave that has any (waves hash a seed: wave 1 may be empty)."""
    waves = by_wave(rollout, agents)
    return waves[min(waves)][0]
