"""The dashboard's queries on PostgreSQL: the JSON tag filter, the rollout page, the gauges."""

from __future__ import annotations

import re

import pytest

from tests.dashboard.helpers import browser
from tests.fleet.harness import Fleet
from tests.rollouts.helpers import commit
from tests.rollouts.test_replicas_pg import pg_fleet, pg_url
from tests.support.metrics import parse, value

__all__ = ["pg_fleet", "pg_url"]
pytestmark = pytest.mark.postgres


def test_tag_filter_rollout_page_and_gauges_on_postgresql(pg_fleet: tuple[Fleet, str]) -> None:
    fleet, _ = pg_fleet
    token = fleet.enrollment_token()
    agents = [
        fleet.enroll(token, f"cam-{i}", tags={"region": "eu" if i % 2 else "us"}) for i in range(4)
    ]
    fleet.version()
    rollout = fleet.rollout(waves=[100])
    fleet.tick()
    commit(fleet, agents[:2], 1, rollout["id"])
    client = browser(fleet, fleet.token("viewer"))
    shown = set(
        re.findall(r'<tr data-device="([^"]+)"', client.get("/ui/fleet?tag=region%3Deu").text)
    )
    assert shown == {"cam-1", "cam-3"}
    page = client.get(f"/ui/rollouts/{rollout['id']}").text
    assert 'data-count="committed">committed 2<' in page
    m = parse(fleet.client.get("/metrics").text)
    assert value(m, "ferry_devices_installed", model="vision/det", slot="main", version="1") == 2
    assert value(m, "ferry_rollout_devices", state="pending") == 2
