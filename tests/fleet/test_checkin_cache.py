"""The check-in cache: served without the database, emptied by every change that matters."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from ferry.protocol.keys import SigningKey
from ferry.server.checkin.cache import CheckinCache, Entry, EpochPoller
from ferry.server.core.db import make_engine, session_scope
from ferry.server.fleet.runtime import FleetSettings
from ferry.server.fleet.tables import Device
from tests.fleet.harness import API, START, Fleet, second_replica


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
    assert (
        'ferry_http_requests_total{method="GET",route="/device/desired-state",status="200"} 2.0'
        in metrics
    )


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
    assert fleet.desired(agent)["signed"]["slots"] == {}  # not selected yet
    fleet.client.post(
        f"{API}/devices/{agent.device_id}/tags", json={"add": {"region": "eu"}}, headers=fleet.admin
    )
    assert fleet.desired(agent)["signed"]["slots"]["main"]["version"] == version


def test_bookkeeping_writes_keep_the_cache(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    fleet.rollout(version=str(fleet.version()), waves=[100])
    fleet.desired(agent)
    fleet.tick()  # nothing to advance: the wave waits
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
    fleet.tick()  # bulk UPDATE of silent devices
    assert _cache(fleet).generation > generation


def test_a_document_near_expiry_is_not_served_from_the_cache(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    first = fleet.desired(agent)
    ttl = fleet.runtime.settings.desired_state_ttl_s
    fleet.clock.advance(ttl * 3 // 4 + 1)
    assert fleet.desired(agent)["signed"]["sequence"] == first["signed"]["sequence"] + 1


def test_another_replicas_change_is_seen_after_one_epoch_poll(fleet: Fleet, tmp_path: Path) -> None:
    (agent,) = fleet.devices(1)
    poller = EpochPoller(_cache(fleet), fleet.app.state.ctx.read_engine)
    poller.check()
    fleet.desired(agent)
    replica_b, client_b = second_replica(fleet, tmp_path)
    with client_b:
        r = client_b.post(f"{API}/devices/{agent.device_id}/revoke", headers=replica_b.admin)
        assert r.status_code == 200
    # Replica A has not polled yet: it still answers from its cache (the documented window).
    assert fleet.client.get(f"{API}/device/desired-state", headers=agent.headers).status_code == 200
    assert poller.check() is True
    assert fleet.client.get(f"{API}/device/desired-state", headers=agent.headers).status_code == 401
    assert poller.check() is False


def test_with_polling_off_nothing_is_cached(fleet: Fleet) -> None:
    fleet.app.state.fleet.settings = FleetSettings(
        start_rollout_engine=False, checkin_cache_poll_s=0
    )
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


def _signer(envelope: dict[str, Any]) -> str:
    return str(envelope["signatures"][0]["keyid"])


def _director_keyid(data_dir: Path) -> str:
    return SigningKey.load(data_dir / "keys" / "director.pem").public.keyid


def test_a_director_key_rotated_by_the_host_cli_reaches_cached_devices(fleet: Fleet) -> None:
    """`ferry keys rotate` is another process with no cache of its own: it must still bump
    the epoch, or this replica serves documents signed by the revoked key for hours."""
    (agent,) = fleet.devices(1)
    poller = EpochPoller(_cache(fleet), fleet.app.state.ctx.read_engine)
    poller.check()
    data_dir = fleet.app.state.ctx.settings.data_dir
    old = _director_keyid(data_dir)
    assert _signer(fleet.desired(agent)) == old
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferry.cli.server_cmds",
            "keys",
            "rotate",
            "--role",
            "director",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert poller.check() is True
    new = _director_keyid(data_dir)
    assert new != old and _signer(fleet.desired(agent)) == new


def test_a_tag_change_written_by_a_process_without_a_cache_bumps_the_epoch(fleet: Fleet) -> None:
    """Any session on the database counts, not only those of an engine that has a cache."""
    (agent,) = fleet.devices(1)
    poller = EpochPoller(_cache(fleet), fleet.app.state.ctx.read_engine)
    poller.check()
    fleet.desired(agent)
    other = make_engine(fleet.app.state.ctx.settings.database_url)
    with session_scope(other) as session:
        device = session.get(Device, agent.device_id)
        assert device is not None
        device.tags = {**device.tags, "region": "eu"}
        session.add(device)
    other.dispose()
    assert poller.check() is True


def test_a_notified_device_is_not_answered_from_a_cache_behind_the_notice(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Push across replicas: replica B announces a rollout; a device checking in at replica A
    before A's poller ran sends the notice's epoch back and gets the new document at once."""
    (agent,) = fleet.devices(1)
    poller = EpochPoller(_cache(fleet), fleet.app.state.ctx.read_engine)
    poller.check()
    before = fleet.desired(agent)["signed"]
    replica_b, client_b = second_replica(fleet, tmp_path)
    with client_b:
        version = replica_b.version()
        rollout = replica_b.rollout(version=str(version), waves=[100])
        replica_b.tick()
    (epoch,) = {e for e in replica_b.notifier.epochs if e is not None}
    headers = agent.headers
    stale = fleet.client.get(f"{API}/device/desired-state", headers=headers).json()["signed"]
    assert stale["sequence"] == before["sequence"], "without the epoch: the documented window"
    fresh = fleet.client.get(
        f"{API}/device/desired-state", headers={**headers, "X-Ferry-Epoch": str(epoch)}
    ).json()["signed"]
    assert fresh["sequence"] > before["sequence"]
    assert fresh["slots"]["main"]["rollout_id"] == rollout["id"]


def test_a_forged_epoch_only_costs_its_sender_a_database_read(fleet: Fleet) -> None:
    (agent, other) = fleet.devices(2)
    EpochPoller(_cache(fleet), fleet.app.state.ctx.read_engine).check()
    fleet.desired(agent)
    fleet.desired(other)
    generation = _cache(fleet).generation
    forged = {**agent.headers, "X-Ferry-Epoch": str(10**17)}
    assert fleet.client.get(f"{API}/device/desired-state", headers=forged).status_code == 200
    assert _cache(fleet).generation == generation and len(_cache(fleet)) == 2
    junk = {**agent.headers, "X-Ferry-Epoch": "-1; drop"}
    assert fleet.client.get(f"{API}/device/desired-state", headers=junk).status_code == 200
