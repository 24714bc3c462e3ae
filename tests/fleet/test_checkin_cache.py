"""The check-in cache: served without the database, emptied by every change that matters."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine

from ferry.server.checkin.cache import CheckinCache, Entry, EpochPoller
from ferry.server.fleet.runtime import FleetSettings
from tests.fleet.harness import API, START, Fleet, build_fleet


@contextmanager
def statements(*engines: Engine) -> Iterator[list[str]]:
    """Every SQL statement the engines run inside the block."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        seen.append(sql)

    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


def _engines(fleet: Fleet) -> tuple[Engine, Engine]:
    return fleet.app.state.ctx.engine, fleet.app.state.ctx.read_engine


def _cache(fleet: Fleet) -> CheckinCache:
    cache: CheckinCache = fleet.app.state.checkin_cache
    return cache


def test_a_repeated_check_in_is_answered_without_touching_the_database(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    first = fleet.desired(agent)
    with statements(*_engines(fleet)) as seen:
        assert fleet.desired(agent) == first
    assert seen == []
    metrics = fleet.client.get("/metrics").text
    assert "ferry_checkin_cache_hits_total 1.0" in metrics
    assert 'ferry_http_requests_total{method="GET",route="/device/desired-state",status="200"} 2.0' \
        in metrics


def test_revoking_a_cached_device_refuses_it_at_once(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    fleet.desired(agent)
    r = fleet.client.post(f"{API}/devices/{agent.device_id}/revoke", headers=fleet.admin)
    assert r.status_code == 200
    assert fleet.client.get(f"{API}/device/desired-state", headers=agent.headers).status_code == 401


def test_a_new_rollout_and_a_tag_change_reach_cached_devices_at_once(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    assert fleet.desired(agent)["signed"]["slots"] == {}
    version = fleet.version()
    fleet.rollout(version=str(version), waves=[100], selector="region=eu", allow_empty=True)
    assert fleet.desired(agent)["signed"]["slots"] == {}          # not selected yet
    fleet.client.post(f"{API}/devices/{agent.device_id}/tags", json={"add": {"region": "eu"}},
                      headers=fleet.admin)
    assert fleet.desired(agent)["signed"]["slots"]["main"]["version"] == version


def test_bookkeeping_writes_keep_the_cache(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    fleet.rollout(version=str(fleet.version()), waves=[100])
    fleet.desired(agent)
    fleet.tick()                               # nothing to advance: the wave waits
    generation = _cache(fleet).generation
    fleet.tick()
    fleet.runtime.last_seen.flush(fleet.app.state.ctx.engine)
    assert _cache(fleet).generation == generation
    with statements(*_engines(fleet)) as seen:
        fleet.desired(agent)
    assert seen == []


def test_a_device_timed_out_by_the_engine_empties_the_cache(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[100], in_progress_timeout_s=60)
    fleet.tick()
    fleet.desired(agent)
    fleet.report(agent, "downloading", to_version=version, rollout_id=rollout["id"])
    fleet.desired(agent)
    generation = _cache(fleet).generation
    fleet.clock.advance(120)
    fleet.tick()                               # bulk UPDATE of silent devices
    assert _cache(fleet).generation > generation


def test_a_document_near_expiry_is_not_served_from_the_cache(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    first = fleet.desired(agent)
    ttl = fleet.runtime.settings.desired_state_ttl_s
    fleet.clock.advance(ttl * 3 // 4 + 1)
    assert fleet.desired(agent)["signed"]["sequence"] == first["signed"]["sequence"] + 1


def test_another_replicas_change_is_seen_after_one_epoch_poll(fleet: Fleet, tmp_path: Path
                                                              ) -> None:
    (agent,) = fleet.devices(1)
    poller = EpochPoller(_cache(fleet), fleet.app.state.ctx.read_engine)
    poller.check()
    fleet.desired(agent)
    other_dir = tmp_path / "replica-b"
    shutil.copytree(fleet.app.state.ctx.settings.data_dir, other_dir, dirs_exist_ok=True)
    replica_b, client_b = build_fleet(other_dir,
                                      database_url=fleet.app.state.ctx.settings.database_url)
    with client_b:
        r = client_b.post(f"{API}/devices/{agent.device_id}/revoke", headers=replica_b.admin)
        assert r.status_code == 200
    # Replica A has not polled yet: it still answers from its cache (the documented window).
    assert fleet.client.get(f"{API}/device/desired-state", headers=agent.headers).status_code == 200
    assert poller.check() is True
    assert fleet.client.get(f"{API}/device/desired-state", headers=agent.headers).status_code == 401
    assert poller.check() is False


def test_with_polling_off_nothing_is_cached(fleet: Fleet) -> None:
    fleet.app.state.fleet.settings = FleetSettings(start_rollout_engine=False,
                                                   checkin_cache_poll_s=0)
    (agent,) = fleet.devices(1)
    fleet.desired(agent)
    with statements(*_engines(fleet)) as seen:
        fleet.desired(agent)
    assert seen and len(_cache(fleet)) == 0


def test_the_cache_is_bounded_and_refuses_entries_read_before_a_change() -> None:
    cache = CheckinCache(max_entries=2)
    far = START + timedelta(days=1)
    for key in ("a", "b", "c"):
        cache.store(key, Entry(key, b"{}", far, cache.generation))
    assert len(cache) == 2 and cache.lookup("a", START, 3600) is None
    assert cache.lookup("c", START, 3600) is not None
    stale = Entry("d", b"{}", far, cache.generation)
    cache.invalidate()
    cache.store("d", stale)
    assert len(cache) == 0
