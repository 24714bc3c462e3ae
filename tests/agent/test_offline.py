"""Offline behaviour with a real Mosquitto and a real agent process.

Either transport alone is enough: with the broker down the agent converges by
polling and reports over HTTP; with the server down it keeps its model, retries,
and converges when the server is back. Reports queued on disk while both are
down arrive when they come back. Every transition arrives exactly once, counted
by ``report_id``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import REPO_ROOT, Device
from tests.support.device_repository import DeviceRepository
from tests.support.mosquitto import MosquittoBroker, free_port

UPDATE = ["downloading", "verifying", "staged", "switching", "probing", "committed"]
V1 = {"model.onnx": b"\x01" * 50_000}
V2 = {"model.onnx": b"\x02" * 50_000}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker that keeps sessions across restarts, as a production broker would."""
    workdir = tmp_path / "mosquitto"
    conf = f"allow_anonymous true\npersistence true\npersistence_location {workdir}/\n"
    started = MosquittoBroker(workdir, extra_conf=conf).start()
    yield started
    started.stop()


def assert_each_transition_once(repo: DeviceRepository, expected: list[str]) -> None:
    """Every transition arrived (maybe more than once), and counted by id it is there once."""
    unique = repo.reports_for("main")
    assert [r["state"] for r in unique] == expected
    assert all(count >= 1 for count in repo.received.ids().values())
    assert len({r["report_id"] for r in unique}) == len(expected)


def installed(device: Device) -> dict[str, str]:
    """The versions and links of the slot (staging may hold a partial download)."""
    return {k: v for k, v in device.models().items() if "/staging" not in k}


def wait_version(device: Device, repo: DeviceRepository, version: int) -> None:
    repo.wait_for(lambda: device.current_version() == version, what=f"v{version} to be running")


def wait_reports(repo: DeviceRepository, expected: list[str]) -> None:
    repo.wait_for(lambda: repo.states() == expected, what=f"reports {expected}")


def test_broker_down_converges_by_polling(make_device: Any, repo: DeviceRepository) -> None:
    repo.mqtt_url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    device = make_device()
    device.start()
    repo.target({"main": repo.add_bundle(V1, version=1)})
    wait_version(device, repo, 1)
    wait_reports(repo, UPDATE)
    device.stop()
    assert_each_transition_once(repo, UPDATE)
    assert repo.received.via["http"] >= len(UPDATE) and repo.received.via["mqtt"] == 0


def test_a_group_notice_wakes_an_agent_that_polls_rarely(
    make_device: Any, repo: DeviceRepository, broker: MosquittoBroker
) -> None:
    repo.attach_broker(broker.url)
    repo.notice_group = "canary"  # the device's group, given at enrolment
    device = make_device(interval_s=600)
    device.start()
    desired = "/api/v1/device/desired-state"
    repo.wait_for(lambda: any(p == desired for _, p, _ in repo.requests), what="the first sync")
    repo.wait_for(lambda: device.log().count("mqtt_connected") >= 1, what="the MQTT connection")
    repo.target({"main": repo.add_bundle(V1, version=1)})
    wait_version(device, repo, 1)
    device.stop()
    assert '"event": "notice"' in device.log() and "groups/canary/notice" in device.log()


def test_server_down_keeps_the_model_and_converges_when_back(
    make_device: Any, repo: DeviceRepository, broker: MosquittoBroker
) -> None:
    repo.attach_broker(broker.url)
    # A long poll interval: after the first sync, only MQTT notices or retries move it.
    device = make_device(interval_s=600)
    device.start()
    repo.target({"main": repo.add_bundle(V1, version=1)})
    wait_version(device, repo, 1)
    wait_reports(repo, UPDATE)
    before = installed(device)

    repo.stop()
    repo.target({"main": repo.add_bundle(V2, version=2)})  # the notice still goes out
    repo.wait_for(lambda: device.log().count("sync_retry") >= 3, what="the agent to retry")
    assert installed(device) == before and device.current_version() == 1

    repo.start()
    wait_version(device, repo, 2)
    wait_reports(repo, UPDATE + UPDATE)
    device.stop()
    assert_each_transition_once(repo, UPDATE + UPDATE)
    assert repo.received.via["mqtt"] > 0


def test_reports_queued_while_both_are_down_arrive_in_order(
    make_device: Any, repo: DeviceRepository, broker: MosquittoBroker
) -> None:
    repo.attach_broker(broker.url)
    device = make_device()
    device.start()
    repo.target({"main": repo.add_bundle(V1, version=1)})
    wait_version(device, repo, 1)
    repo.target({"main": repo.add_bundle(V2, version=2)})
    wait_version(device, repo, 2)
    wait_reports(repo, UPDATE + UPDATE)

    broker.stop()
    repo.stop()
    rollback = subprocess.run(
        [sys.executable, "-m", "ferry.agent.cli", "--config", str(device.config_path), "rollback"],
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert rollback.returncode == 0, rollback.stderr
    assert device.current_version() == 1
    assert len(list((device.config.state_dir / "reports").glob("*.json"))) == 1  # queued on disk

    broker.start()
    repo.listener_connected.wait(15)
    repo.start()
    wait_reports(repo, UPDATE + UPDATE + ["rolled_back"])
    device.stop()
    assert_each_transition_once(repo, UPDATE + UPDATE + ["rolled_back"])
    assert device.current_version() == 1, "a manual rollback must stick for this directive"
