"""What a rollout costs per device: caches that must never hide a change that matters.

The device-login cache (credential → principal), the manifest memo and the
check-in cache surviving status reports in a running rollout; each test checks
both that the cache is used (no SQL) and that a change reaches the device at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from ferry.protocol.timefmt import format_time
from ferry.server.checkin.cache import CheckinCache, Entry, EpochPoller, credential_key
from ferry.server.core import epoch
from ferry.server.fleet.runtime import FleetSettings
from ferry.server.fleet.tables import Device
from tests.fleet.harness import API, Agent, Fleet, report_doc, second_replica
from tests.fleet.test_checkin_cache import statements
from tests.rollouts.test_replicas_pg import pg_fleet, pg_url  # noqa: F401  (fixtures)


def _cache(fleet: Fleet) -> CheckinCache:
    cache: CheckinCache = fleet.app.state.checkin_cache
    return cache


def _engines(fleet: Fleet) -> tuple[object, ...]:
    ctx = fleet.app.state.ctx
    return ctx.engine, ctx.read_engine


def _manifest(fleet: Fleet, agent: Agent, sha: str, **headers: str) -> object:
    return fleet.client.get(f"{API}/manifests/{sha}", headers={**agent.headers, **headers})


def _in_rollout(fleet: Fleet) -> tuple[Agent, int, str]:
    (agent,) = fleet.devices(1)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[100])
    fleet.tick()
    return agent, version, str(rollout["id"])


# --- the device-login cache ------------------------------------------------------------------


def test_a_device_route_authenticates_a_known_credential_without_sql(fleet: Fleet) -> None:
    agent, version, rollout_id = _in_rollout(fleet)
    fleet.report(agent, "downloading", to_version=version, rollout_id=rollout_id)
    with statements(*_engines(fleet)) as seen:
        fleet.report(agent, "verifying", to_version=version, rollout_id=rollout_id)
    assert seen, "the report itself is written"
    assert not any("device.credential_hash = " in sql for sql in seen)


def test_a_revoked_device_is_refused_at_once_on_every_device_route(fleet: Fleet) -> None:
    agent, version, rollout_id = _in_rollout(fleet)
    sha = fleet.manifest_sha("vision", "det", version)
    assert _manifest(fleet, agent, sha).status_code == 200  # type: ignore[attr-defined]
    fleet.report(agent, "downloading", to_version=version, rollout_id=rollout_id)
    r = fleet.client.post(f"{API}/devices/{agent.device_id}/revoke", headers=fleet.admin)
    assert r.status_code == 200
    assert _manifest(fleet, agent, sha).status_code == 401  # type: ignore[attr-defined]
    r = fleet.client.get(f"{API}/blobs/{'0' * 64}", headers=agent.headers)
    assert r.status_code == 401
    r = fleet.client.post(f"{API}/device/status", json={"reports": []}, headers=agent.headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"


def test_a_rollout_change_keeps_the_logins_and_a_device_change_empties_them(
    fleet: Fleet,
) -> None:
    agent, version, rollout_id = _in_rollout(fleet)
    (other,) = fleet.devices(1, prefix="other")
    fleet.report(agent, "downloading", to_version=version, rollout_id=rollout_id)
    logins = _cache(fleet).login_generation
    fleet.act(rollout_id, "pause")  # a watched rollout change: documents go, logins stay
    with statements(*_engines(fleet)) as seen:
        fleet.report(agent, "verifying", to_version=version, rollout_id=rollout_id)
    assert not any("device.credential_hash = " in sql for sql in seen)
    assert _cache(fleet).login_generation == logins
    r = fleet.client.post(f"{API}/devices/{other.device_id}/revoke", headers=fleet.admin)
    assert r.status_code == 200
    assert _cache(fleet).login_generation > logins
    with statements(*_engines(fleet)) as seen:
        fleet.report(agent, "staged", to_version=version, rollout_id=rollout_id)
    assert any("device.credential_hash = " in sql for sql in seen)


def test_enrolling_more_devices_keeps_the_logins_but_re_enrolment_empties_them(
    fleet: Fleet,
) -> None:
    token = fleet.enrollment_token()
    agent = fleet.enroll(token, "dev-a")
    fleet.desired(agent)
    logins = _cache(fleet).login_generation
    fleet.enroll(token, "dev-b")  # a new row cannot change a login read from another
    assert _cache(fleet).login_generation == logins
    with statements(*_engines(fleet)) as seen:
        fleet.desired(agent)  # the new row emptied the documents: this one is computed
    assert seen, "computed, not cached"
    assert not any("device.credential_hash = " in sql for sql in seen)
    r = fleet.client.post(f"{API}/devices/dev-b/revoke", headers=fleet.admin)
    assert r.status_code == 200
    assert _cache(fleet).login_generation > logins


def test_a_forged_credential_is_never_cached(fleet: Fleet) -> None:
    (agent,) = fleet.devices(1)
    fleet.desired(agent)
    forged = {"Authorization": "Bearer frd_" + "A" * 43}
    for _ in range(2):
        r = fleet.client.get(f"{API}/device/desired-state", headers=forged)
        assert r.status_code == 401
    r = fleet.client.post(f"{API}/device/status", json={"reports": []}, headers=forged)
    assert r.status_code == 401


def test_a_revocation_on_another_replica_is_seen_after_one_epoch_poll(
    fleet: Fleet, tmp_path: Path
) -> None:
    agent, version, _ = _in_rollout(fleet)
    poller = EpochPoller(_cache(fleet), fleet.app.state.ctx.read_engine)
    poller.check()
    sha = fleet.manifest_sha("vision", "det", version)
    assert _manifest(fleet, agent, sha).status_code == 200  # type: ignore[attr-defined]
    replica_b, client_b = second_replica(fleet, tmp_path)
    with client_b:
        r = client_b.post(f"{API}/devices/{agent.device_id}/revoke", headers=replica_b.admin)
        assert r.status_code == 200
    assert poller.check() is True
    assert _manifest(fleet, agent, sha).status_code == 401  # type: ignore[attr-defined]
    r = fleet.client.post(f"{API}/device/status", json={"reports": []}, headers=agent.headers)
    assert r.status_code == 401


def test_with_the_cache_off_every_login_is_looked_up(fleet: Fleet) -> None:
    fleet.app.state.fleet.settings = FleetSettings(
        start_rollout_engine=False, checkin_cache_poll_s=0
    )
    agent, version, rollout_id = _in_rollout(fleet)
    fleet.report(agent, "downloading", to_version=version, rollout_id=rollout_id)
    with statements(*_engines(fleet)) as seen:
        fleet.report(agent, "verifying", to_version=version, rollout_id=rollout_id)
    assert any("device.credential_hash = " in sql for sql in seen)


# --- the manifest memo and its fast path -----------------------------------------------------


def test_a_manifest_is_served_from_memory_with_its_etag(fleet: Fleet) -> None:
    agent, version, _ = _in_rollout(fleet)
    sha = fleet.manifest_sha("vision", "det", version)
    first = fleet.client.get(f"{API}/manifests/{sha}", headers=agent.headers)
    assert first.status_code == 200
    with statements(*_engines(fleet)) as seen:
        again = fleet.client.get(f"{API}/manifests/{sha}", headers=agent.headers)
    assert seen == []
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"] == f'"{sha}"'
    assert again.headers["cache-control"] == first.headers["cache-control"]
    assert again.headers["content-type"] == "application/json"
    not_modified = _manifest(fleet, agent, sha, **{"If-None-Match": f'"{sha}"'})
    assert not_modified.status_code == 304  # type: ignore[attr-defined]


def test_a_device_of_another_namespace_gets_403_not_the_cached_manifest(fleet: Fleet) -> None:
    agent, version, _ = _in_rollout(fleet)
    sha = fleet.manifest_sha("vision", "det", version)
    assert _manifest(fleet, agent, sha).status_code == 200  # type: ignore[attr-defined]
    fleet.namespace("audio")
    (stranger,) = fleet.devices(1, token=fleet.enrollment_token("audio"), prefix="aud")
    fleet.desired(stranger)  # its login is cached now
    r = fleet.client.get(f"{API}/manifests/{sha}", headers=stranger.headers)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"


def test_unknown_and_malformed_manifest_digests_are_4xx(fleet: Fleet) -> None:
    agent, _, _ = _in_rollout(fleet)
    fleet.desired(agent)
    assert _manifest(fleet, agent, "f" * 64).status_code == 404  # type: ignore[attr-defined]
    for bad in ("F" * 64, "f" * 63, "f" * 65, "g" * 64):
        assert _manifest(fleet, agent, bad).status_code == 422  # type: ignore[attr-defined]
    r = fleet.client.get(f"{API}/manifests/{'f' * 64}")
    assert r.status_code == 401


# --- blob HEAD from memory --------------------------------------------------------------------


def _blob_sha(fleet: Fleet, agent: Agent, version: int) -> str:
    sha = fleet.manifest_sha("vision", "det", version)
    manifest = fleet.client.get(f"{API}/manifests/{sha}", headers=agent.headers).json()
    return str(manifest["signed"]["files"][0]["sha256"])


def _not_asked(sha256: str) -> int:
    raise AssertionError(f"the store was asked for the size of {sha256}")


def _heads_counted(fleet: Fleet) -> float:
    labels = {"method": "HEAD", "route": "/blobs/{sha256}", "status": "200"}
    registry = fleet.app.state.ctx.metrics.registry
    return float(registry.get_sample_value("ferry_http_requests_total", labels) or 0.0)


def test_a_blob_head_is_answered_from_memory_with_the_routes_headers(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, version, _ = _in_rollout(fleet)
    blob = f"{API}/blobs/{_blob_sha(fleet, agent, version)}"
    first = fleet.client.head(blob, headers=agent.headers)
    assert first.status_code == 200
    counted = _heads_counted(fleet)
    monkeypatch.setattr(fleet.app.state.ctx.blobs, "size", _not_asked)
    with statements(*_engines(fleet)) as seen:
        again = fleet.client.head(blob, headers=agent.headers)
    assert seen == []
    assert again.status_code == 200 and again.content == b""
    for name in ("content-length", "etag", "accept-ranges", "cache-control"):
        assert again.headers[name] == first.headers[name]
    assert _heads_counted(fleet) == counted + 1
    monkeypatch.undo()
    conditional = {**agent.headers, "If-None-Match": first.headers["etag"]}
    assert fleet.client.head(blob, headers=conditional).status_code == 304  # by the route
    assert fleet.client.head(blob).status_code == 401


def test_a_revoked_device_gets_401_for_a_blob_head_it_had_been_answered(fleet: Fleet) -> None:
    agent, version, _ = _in_rollout(fleet)
    blob = f"{API}/blobs/{_blob_sha(fleet, agent, version)}"
    assert fleet.client.head(blob, headers=agent.headers).status_code == 200
    r = fleet.client.post(f"{API}/devices/{agent.device_id}/revoke", headers=fleet.admin)
    assert r.status_code == 200
    assert fleet.client.head(blob, headers=agent.headers).status_code == 401


# --- HTTP status batches of cached logins, before routing -----------------------------------


def _sample(fleet: Fleet, name: str, **labels: str) -> float:
    registry = fleet.app.state.ctx.metrics.registry
    return float(registry.get_sample_value(name, labels) or 0.0)


def _post(fleet: Fleet, agent: Agent, *reports: dict[str, object]) -> object:
    body = {"reports": list(reports)}
    return fleet.client.post(f"{API}/device/status", json=body, headers=agent.headers)


def test_a_status_batch_of_a_cached_login_is_taken_before_routing(fleet: Fleet) -> None:
    agent, version, rollout_id = _in_rollout(fleet)
    fleet.report(agent, "downloading", to_version=version, rollout_id=rollout_id)  # routed
    routed = _sample(fleet, "ferry_worker_http_requests")
    posts = _sample(
        fleet, "ferry_http_requests_total", method="POST", route="/device/status", status="200"
    )
    doc = report_doc(
        agent.device_id,
        "verifying",
        to_version=version,
        rollout_id=rollout_id,
        at=format_time(fleet.clock.now),
    )
    with statements(*_engines(fleet)) as seen:
        r = _post(fleet, agent, doc)
    assert r.status_code == 200  # type: ignore[attr-defined]
    assert r.json() == {"accepted": [doc["report_id"]], "duplicates": []}  # type: ignore[attr-defined]
    assert not any("device.credential_hash = " in sql for sql in seen)
    assert _sample(fleet, "ferry_worker_http_requests") == routed  # not through the middleware
    assert (
        _sample(
            fleet, "ferry_http_requests_total", method="POST", route="/device/status", status="200"
        )
        == posts + 1
    )
    again = _post(fleet, agent, doc)
    assert again.json() == {"accepted": [], "duplicates": [doc["report_id"]]}  # type: ignore[attr-defined]
    assert fleet.status(rollout_id)["totals"]["downloading"] == 1


def test_a_status_batch_the_route_refuses_keeps_the_one_error_shape(fleet: Fleet) -> None:
    agent, version, rollout_id = _in_rollout(fleet)
    (other,) = fleet.devices(1, prefix="other")
    fleet.report(agent, "downloading", to_version=version, rollout_id=rollout_id)  # login cached
    at = format_time(fleet.clock.now)
    foreign = report_doc(other.device_id, "downloading", to_version=version, at=at)
    r = _post(fleet, agent, foreign)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"  # type: ignore[attr-defined]
    r = _post(fleet, agent, {"state": "nonsense"})
    assert r.status_code == 422  # type: ignore[attr-defined]
    assert r.json()["error"]["code"] == "validation_error"  # type: ignore[attr-defined]
    r = fleet.client.post(
        f"{API}/device/status", json={"reports": [], "x": 1}, headers=agent.headers
    )
    assert r.status_code == 422 and "error" in r.json()


# --- status reports keep the check-in cache while they cannot change a document --------------


def test_reports_in_a_running_rollout_keep_the_check_in_cache(fleet: Fleet) -> None:
    agent, version, rollout_id = _in_rollout(fleet)
    document = fleet.desired(agent)
    generation = _cache(fleet).generation
    for state in ("downloading", "verifying", "staged", "switching", "probing", "committed"):
        fleet.report(agent, state, to_version=version, rollout_id=rollout_id)
    assert _cache(fleet).generation == generation
    with statements(*_engines(fleet)) as seen:
        assert fleet.desired(agent) == document
    assert seen == []


def test_a_report_in_a_halted_rollout_reaches_the_device_at_once(fleet: Fleet) -> None:
    """Halted: only devices that took the update keep it as their target, so a report that
    moves a member from pending to downloading changes its desired state."""
    agent, version, rollout_id = _in_rollout(fleet)
    fleet.desired(agent)
    fleet.act(rollout_id, "pause")
    fleet.act(rollout_id, "cancel")
    assert fleet.desired(agent)["signed"]["slots"] == {}  # pending: nothing to take
    generation = _cache(fleet).generation
    fleet.report(agent, "downloading", to_version=version, rollout_id=rollout_id)
    assert _cache(fleet).generation > generation
    assert fleet.desired(agent)["signed"]["slots"]["main"]["version"] == version


def test_a_rollout_halted_by_its_gate_reaches_cached_devices_at_once(fleet: Fleet) -> None:
    devices = fleet.devices(4)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[100], max_failure_pct=10)
    fleet.tick()
    for agent in devices:
        assert fleet.desired(agent)["signed"]["slots"]["main"]["version"] == version
    rid = str(rollout["id"])
    fleet.report(devices[0], "failed", to_version=version, rollout_id=rid, error_code="x")
    fleet.tick()
    assert fleet.show(rid)["state"] == "halted"
    # devices[1..] never started: a halted rollout no longer targets them.
    assert fleet.desired(devices[1])["signed"]["slots"] == {}


def test_the_poller_does_not_empty_the_cache_again_for_this_replicas_own_change(
    fleet: Fleet,
) -> None:
    (agent,) = fleet.devices(1)
    poller = EpochPoller(_cache(fleet), fleet.app.state.ctx.read_engine)
    poller.check()
    fleet.rollout(version=str(fleet.version()), waves=[100])  # a local, watched change
    fleet.desired(agent)
    generation, logins = _cache(fleet).generation, _cache(fleet).login_generation
    assert poller.check() is False
    assert (_cache(fleet).generation, _cache(fleet).login_generation) == (generation, logins)
    with statements(*_engines(fleet)) as seen:
        fleet.desired(agent)
    assert seen == []


@contextmanager
def polled_before_the_listener(fleet: Fleet, poller: EpochPoller) -> Iterator[None]:
    """The first commit that bumps the epoch in the block is polled between its database
    commit and its local listeners (the poller reads the value it wrote meanwhile)."""
    read, polls = threading.Event(), []

    def on_read(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if "FROM fleet_epoch" in statement:
            read.set()

    def before_the_listeners(session: Session) -> None:
        if polls or epoch._BUMPED not in session.info:
            return
        polls.append(threading.Thread(target=poller.check))
        polls[0].start()
        assert read.wait(10)
        time.sleep(0.3)  # a poller that does not wait for the listener decides meanwhile

    engine = fleet.app.state.ctx.read_engine
    event.listen(engine, "after_cursor_execute", on_read)
    event.listen(Session, "after_commit", before_the_listeners, insert=True)
    try:
        yield
    finally:
        event.remove(Session, "after_commit", before_the_listeners)
        event.remove(engine, "after_cursor_execute", on_read)
    assert polls, "no commit bumped the epoch"
    polls[0].join(10)


def test_a_poll_during_an_enrolment_keeps_the_device_logins(fleet: Fleet) -> None:
    """The poller used to take an enrolment whose listener had not run yet for another
    replica's change and empty every device login (5 times in 1,000 enrolments)."""
    token = fleet.enrollment_token()
    agent = fleet.enroll(token, "dev-a")
    fleet.desired(agent)  # its login is cached
    poller = EpochPoller(_cache(fleet), fleet.app.state.ctx.read_engine)
    poller.check()
    logins = _cache(fleet).login_generation
    with polled_before_the_listener(fleet, poller):
        fleet.enroll(token, "dev-b")
    assert _cache(fleet).login_generation == logins
    with statements(*_engines(fleet)) as seen:
        fleet.desired(agent)
    assert not any("device.credential_hash = " in sql for sql in seen)


def test_a_bump_the_listener_has_not_reported_yet_counts_as_foreign() -> None:
    cache = CheckinCache()
    cache.changed_here(frozenset(), 5, None)
    assert cache.foreign_since(4, 5) == []
    assert cache.foreign_since(5, 7) == [6, 7]  # not ours
    cache.changed_here(frozenset(), 9, None)
    assert cache.foreign_since(8, 9) == []
    assert cache.foreign_since(9, 3) is None  # the counter went back: a restored database


# --- a wave change voids only the documents of the devices that join -------------------------


def _two_waves(fleet: Fleet) -> tuple[list[Agent], list[Agent], str, int]:
    """Devices of wave 1 (targeted) and of wave 2 (not yet), all with a cached document."""
    devices = fleet.devices(12)
    version = fleet.version()
    rollout = fleet.rollout(version=str(version), waves=[50, 100])
    fleet.tick()
    first, second = [], []
    for agent in devices:
        (first if fleet.desired(agent)["signed"]["slots"] else second).append(agent)
    assert first and second
    return first, second, str(rollout["id"]), version


def _cached(fleet: Fleet, agent: Agent) -> dict[str, object]:
    """The device's document, asserted to come from the check-in cache (no SQL)."""
    with statements(*_engines(fleet)) as seen:
        document = fleet.desired(agent)
    assert seen == []
    return document


def test_a_wave_change_voids_only_the_documents_of_the_devices_that_join(fleet: Fleet) -> None:
    first, second, rollout_id, version = _two_waves(fleet)
    kept = fleet.desired(first[0])
    generation = _cache(fleet).generation
    fleet.act(rollout_id, "advance")
    assert _cache(fleet).generation > generation  # entries computed before are not stored
    assert fleet.desired(second[0])["signed"]["slots"]["main"]["version"] == version
    assert _cached(fleet, first[0]) == kept
    fleet.act(rollout_id, "advance")  # completed: nobody's document changes
    assert fleet.show(rollout_id)["state"] == "completed"
    assert _cached(fleet, first[0]) == kept
    assert _cached(fleet, second[0])["signed"]["slots"]["main"]["version"] == version


def test_a_change_that_is_not_a_wave_change_still_voids_every_document(fleet: Fleet) -> None:
    first, _, rollout_id, _ = _two_waves(fleet)
    fleet.desired(first[0])
    fleet.act(rollout_id, "cancel")  # cancelled: the claim depends on each member's progress
    assert fleet.desired(first[0])["signed"]["slots"] == {}


def test_a_wave_change_on_another_replica_reaches_the_joining_devices_after_one_poll(
    fleet: Fleet, tmp_path: Path
) -> None:
    first, second, rollout_id, version = _two_waves(fleet)
    kept = fleet.desired(first[0])
    poller = EpochPoller(_cache(fleet), fleet.app.state.ctx.read_engine)
    poller.check()
    replica_b, client_b = second_replica(fleet, tmp_path)
    with client_b:
        before_b = replica_b.desired(first[0])
        r = client_b.post(f"{API}/rollouts/{rollout_id}/advance", headers=replica_b.admin)
        assert r.status_code == 200
        joined = replica_b.desired(second[0])
        assert joined["signed"]["slots"]["main"]["version"] == version
        with statements(*_engines(replica_b)) as seen:
            assert replica_b.desired(first[0]) == before_b
        assert seen == []
    assert poller.check() is True
    assert fleet.desired(second[0]) == joined
    assert _cached(fleet, first[0]) == kept


def test_an_unknown_scope_voids_everything() -> None:
    cache = CheckinCache()
    cache.store("k", Entry("d", b"{}", datetime.now(UTC) + timedelta(days=1), 0))
    cache.void(["wave:1:1:2"])
    assert len(cache) == 1
    cache.void(["something:else"])
    assert len(cache) == 0


# --- desired states of cached logins, computed before routing --------------------------------

_CHECKIN_ROUTE = {"method": "GET", "route": "/device/desired-state", "status": "200"}


def _logged_in_then_voided(fleet: Fleet) -> tuple[Agent, int]:
    """A device whose login is cached and whose cached document a new rollout voided."""
    (agent,) = fleet.devices(1)
    fleet.desired(agent)  # its login (and its first document) is cached
    version = fleet.version()
    fleet.rollout(version=str(version), waves=[100])  # empties the documents, keeps the logins
    fleet.tick()
    return agent, version


def test_a_cached_logins_new_desired_state_is_computed_before_routing(fleet: Fleet) -> None:
    agent, version = _logged_in_then_voided(fleet)
    routed = _sample(fleet, "ferry_worker_http_requests")
    gets = _sample(fleet, "ferry_http_requests_total", **_CHECKIN_ROUTE)
    computed = _sample(fleet, "ferry_checkin_duration_seconds_count", path="computed")
    with statements(*_engines(fleet)) as seen:
        document = fleet.desired(agent)
    assert document["signed"]["slots"]["main"]["version"] == version
    assert not any("device.credential_hash = " in sql for sql in seen)
    assert _sample(fleet, "ferry_worker_http_requests") == routed  # not through the middleware
    assert _sample(fleet, "ferry_http_requests_total", **_CHECKIN_ROUTE) == gets + 1
    assert _sample(fleet, "ferry_checkin_duration_seconds_count", path="computed") == computed + 1
    with statements(*_engines(fleet)) as seen:
        assert fleet.desired(agent) == document  # the computation filled the cache
    assert seen == []


def test_a_crash_after_the_commit_hands_over_to_the_route_without_a_second_sequence(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The document is committed, then remembering it fails: the route answers, with the
    stored document (a retry must not sign a second sequence for the same content)."""
    agent, _ = _logged_in_then_voided(fleet)
    store, failures = CheckinCache.store, []

    def fails_once(cache: CheckinCache, key: str, entry: Entry) -> None:
        if not failures:
            failures.append(key)
            raise RuntimeError("crash between the commit and the cache")
        store(cache, key, entry)

    monkeypatch.setattr(CheckinCache, "store", fails_once)
    routed = _sample(fleet, "ferry_worker_http_requests")
    first = fleet.desired(agent)
    assert failures and _sample(fleet, "ferry_worker_http_requests") == routed + 1
    monkeypatch.undo()
    with statements(*_engines(fleet)) as seen:
        assert fleet.desired(agent) == first  # the route's answer was cached
    assert seen == []


@pytest.mark.postgres
def test_a_device_revoked_on_another_replica_gets_401_before_the_poll(
    pg_fleet: tuple[Fleet, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Replica A still holds the login (no poll yet); computing refuses the revoked row and
    the route answers in the one error shape, never a document."""
    fleet, _ = pg_fleet
    agent, _ = _logged_in_then_voided(fleet)
    replica_b, client_b = second_replica(fleet, tmp_path)
    with client_b:
        r = client_b.post(f"{API}/devices/{agent.device_id}/revoke", headers=replica_b.admin)
        assert r.status_code == 200
    assert _cache(fleet).login(credential_key(agent.credential)) is not None
    r = fleet.client.get(f"{API}/device/desired-state", headers=agent.headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"


@pytest.mark.postgres
def test_concurrent_fetches_on_two_replicas_sign_one_new_sequence(
    pg_fleet: tuple[Fleet, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    fleet, _ = pg_fleet
    agent, version = _logged_in_then_voided(fleet)
    with Session(fleet.app.state.ctx.engine) as session:
        sequence = session.get(Device, agent.device_id).ds_sequence  # type: ignore[union-attr]
    replica_b, client_b = second_replica(fleet, tmp_path)
    with client_b:
        replica_b.desired(agent)  # replica B's login is cached too, its document voided next
        replica_b.app.state.checkin_cache.invalidate(logins=False)
        _cache(fleet).invalidate(logins=False)
        clients = [fleet.client, client_b] * 8
        with ThreadPoolExecutor(len(clients)) as pool:
            answers = list(
                pool.map(
                    lambda c: c.get(f"{API}/device/desired-state", headers=agent.headers),
                    clients,
                )
            )
    assert {r.status_code for r in answers} == {200}
    assert len({r.content for r in answers}) == 1
    signed = answers[0].json()["signed"]
    assert signed["sequence"] == sequence + 1
    assert signed["slots"]["main"]["version"] == version
