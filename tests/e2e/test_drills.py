"""Failure drills with real processes: ferry server, Mosquitto, ferry-agent, the simulator.

Short ticks, zero bake times and small bundles keep each drill to seconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ferry.cli.demo import AgentProcess
from ferry.protocol import endpoints, topics
from tests.e2e._stack import OBSERVER, Stack, running_stack
from tests.mqtt._clients import Peer
from tests.support.mosquitto import require_mosquitto

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
BUNDLE = 4096
SETTLE_S = 3.0  # time given to a wrong behaviour to show itself (not a speed assertion)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    require_mosquitto()
    yield from running_stack(tmp_path)


def _completed(stack: Stack, rollout_id: str) -> bool:
    assert stack.op is not None
    return stack.op.rollout_status(rollout_id)["rollout"]["state"] == "completed"


def _all_on(stack: Stack, version: int, prefix: str, count: int) -> bool:
    versions = [v for d, v in stack.installed().items() if d.startswith(prefix)]
    return len(versions) == count and all(v == version for v in versions)


def _baseline(stack: Stack, version: int, prefix: str, count: int) -> None:
    assert stack.op is not None
    stack.wait(
        lambda: len([d for d in stack.installed() if d.startswith(prefix)]) == count,
        f"{count} enrolled devices",
    )
    rollout = stack.op.create_rollout(version, [100], min_success_pct=50, max_failure_pct=50)
    stack.wait(
        lambda: _completed(stack, rollout["id"]) and _all_on(stack, version, prefix, count),
        f"everyone on v{version}",
    )


def _reconnected(stack: Stack, log_mark: int, prefix: str) -> set[str]:
    """Device ids that Mosquitto logged as connected since byte ``log_mark`` of its log."""
    with stack.broker.log_path.open("rb") as log:
        log.seek(log_mark)
        text = log.read().decode(errors="replace")
    return set(re.findall(rf"New client connected from \S+ as ({re.escape(prefix)}-\d+)", text))


def test_broker_outage_devices_converge_by_polling_then_push_resumes(
    stack: Stack, tmp_path: Path
) -> None:
    assert stack.op is not None
    v1, v2, v3 = stack.op.publish_model(tmp_path / "bundles", [False, False, False], BUNDLE)
    stack.simulate(12, "outage")
    _baseline(stack, v1, "outage", 12)

    stack.broker.kill()
    during = stack.op.create_rollout(v2, [50, 100])
    stack.wait(
        lambda: _completed(stack, during["id"]) and _all_on(stack, v2, "outage", 12),
        "convergence on v2 by HTTP polling while the broker is down",
    )

    accepted = stack.metric("ferry_mqtt_status_messages_total", outcome="accepted")
    log_mark = stack.broker.log_path.stat().st_size
    stack.start_broker()
    stack.wait(
        lambda: len(_reconnected(stack, log_mark, "outage")) == 12,
        "every device to reconnect to the broker (jittered backoff)",
    )
    watcher = Peer(stack.broker.url, *OBSERVER)
    assert watcher.connect()
    watcher.subscribe(topics.group_notice("all"))
    after = stack.op.create_rollout(v3, [100])
    stack.wait(
        lambda: _completed(stack, after["id"]) and _all_on(stack, v3, "outage", 12),
        "convergence on v3 once the broker is back",
    )
    assert watcher.wait_for(topics.group_notice("all"))  # the server publishes again
    assert stack.metric("ferry_mqtt_status_messages_total", outcome="accepted") > accepted
    watcher.close()


def test_server_killed_mid_wave_continues_and_loses_no_report(stack: Stack, tmp_path: Path) -> None:
    assert stack.op is not None
    v1, v2 = stack.op.publish_model(tmp_path / "bundles", [False, False], BUNDLE)
    sim = stack.simulate(30, "crash", "--step-delay", "0.2")
    _baseline(stack, v1, "crash", 30)
    rollout = stack.op.create_rollout(v2, [10, 50, 100], min_success_pct=90)

    def past_first_wave() -> bool:
        assert stack.op is not None
        return stack.op.rollout_status(rollout["id"])["rollout"]["wave"] >= 2

    stack.wait(past_first_wave, "the second wave to open")
    stack.server.kill()
    time.sleep(SETTLE_S)  # devices keep reporting; Mosquitto queues for the server's session
    stack.server.start()
    stack.wait(
        lambda: _completed(stack, rollout["id"]) and _all_on(stack, v2, "crash", 30),
        "the rollout to finish after the restart",
    )
    summary = sim.stop()
    sent = summary["reports_mqtt"] + summary["reports_http"]
    stored = sum(len(stack.history(device)) for device in stack.installed())
    assert stored == sent
    status = stack.op.rollout_status(rollout["id"])
    assert [w["wave"] for w in status["waves"] if w["total"]] == sorted(
        w["wave"] for w in status["waves"] if w["total"]
    )
    assert status["totals"]["committed"] == 30


def test_device_offline_during_its_wave_converges_on_reconnect(
    stack: Stack, tmp_path: Path
) -> None:
    assert stack.op is not None
    (v1,) = stack.op.publish_model(tmp_path / "bundles", [False], BUNDLE)
    token = stack.op.enrollment_token(None)
    online = AgentProcess(tmp_path / "online", "agent-online", poll_interval_s=1.0)
    offline = AgentProcess(tmp_path / "offline", "agent-offline", poll_interval_s=1.0)
    for agent in (online, offline):
        agent.enroll(stack.server.url, token)
    online.start()
    try:
        rollout = stack.op.create_rollout(v1, [100], min_success_pct=50)
        stack.wait(lambda: _completed(stack, rollout["id"]), "the wave to pass without it")
        assert stack.installed()["agent-offline"] is None
        offline.start()
        stack.wait(lambda: stack.installed()["agent-offline"] == v1, "the late device to commit")
        assert offline.status()["slots"]["main"]["current"]["version"] == v1
    finally:
        online.stop()
        offline.stop()


def test_crossing_the_failure_limit_halts_and_nothing_beyond_installs(
    stack: Stack, tmp_path: Path
) -> None:
    assert stack.op is not None
    v1, bad = stack.op.publish_model(tmp_path / "bundles", [False, True], BUNDLE)
    stack.simulate(40, "halt")
    _baseline(stack, v1, "halt", 40)
    rollout = stack.op.create_rollout(bad, [10, 100], max_failures=0, max_failure_pct=None)

    def halted() -> bool:
        assert stack.op is not None
        return stack.op.rollout_status(rollout["id"])["rollout"]["state"] == "halted"

    stack.wait(halted, "the rollout to halt")
    time.sleep(SETTLE_S)
    status = stack.op.rollout_status(rollout["id"])
    assert status["rollout"]["state"] == "halted" and status["rollout"]["wave"] == 1
    later = status["waves"][1]
    assert later["counts"]["pending"] == later["total"] > 0
    assert bad not in stack.installed().values()


def test_revoked_device_loses_broker_access(stack: Stack) -> None:
    assert stack.op is not None
    stack.op.sdk.create_namespace("demo")
    token = stack.op.enrollment_token(None)
    answer = httpx.post(
        f"{stack.server.url}{endpoints.ENROLL}",
        timeout=30,
        json={
            "enrollment_token": token,
            "device_id": "dev-revoked",
            "hardware": "x86_64",
            "agent_version": "test",
            "tags": {},
        },
    ).json()
    login = answer["mqtt"]
    assert login["url"] == stack.broker.url

    def can_log_in() -> bool:
        peer = Peer(login["url"], login["username"], login["password"])
        accepted = peer.connect()
        peer.close()
        return accepted

    stack.wait(can_log_in, "the new device's broker login to work")
    stack.op._call("POST", "/devices/dev-revoked/revoke")
    stack.wait(lambda: not can_log_in(), "the revoked device's login to be refused")
