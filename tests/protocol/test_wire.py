"""Status reports, MQTT topic names and wave membership."""

import json
import re
from pathlib import Path

import pytest

from ferry.protocol.documents import AgentState, StatusReport
from ferry.protocol.errors import MalformedError
from ferry.protocol.topics import (
    device_id_from_status_topic,
    device_notice,
    device_status,
    group_notice,
)
from ferry.protocol.waves import wave_bucket, wave_index


def _report(**kw: object) -> dict:
    base = StatusReport(
        "r-1",
        "dev-1",
        "main",
        AgentState.COMMITTED,
        "2026-11-25T03:00:00Z",
        from_version=1,
        to_version=2,
        timings={"download_ms": 12},
    ).to_dict()
    return base | kw


def test_status_report_round_trips() -> None:
    report = StatusReport.from_dict(_report())
    assert (
        report.state is AgentState.COMMITTED and StatusReport.from_dict(report.to_dict()) == report
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"state": "exploded"},
        {"timings": {"download_ms": 1.5}},
        {"timings": {"x": -1}},
        {"detail": "x" * 5000},
        {"slot": "../x"},
        {"at": "yesterday"},
        {"to_version": "2"},
    ],
)
def test_bad_status_reports_are_refused(bad: dict) -> None:
    with pytest.raises(MalformedError):
        StatusReport.from_dict(_report(**bad))


def test_topics_live_under_the_versioned_prefix() -> None:
    assert device_notice("dev-1") == "ferry/v1/devices/dev-1/notice"
    assert device_status("dev-1") == "ferry/v1/devices/dev-1/status"
    assert group_notice("canary") == "ferry/v1/groups/canary/notice"
    assert device_id_from_status_topic("ferry/v1/devices/dev-1/status") == "dev-1"
    assert device_id_from_status_topic("ferry/v1/devices/dev-1/notice") is None


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "", "x" * 200])
def test_ids_that_would_change_a_topic_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        device_status(bad)
    with pytest.raises(ValueError):
        group_notice(bad)


PROTOCOL_DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _wave_vectors() -> list[list]:
    """The known-answer table of docs/protocol.md §7: one table, for docs and tests."""
    text = PROTOCOL_DOC.read_text("utf-8")
    block = re.search(r"<!-- wave-vectors: begin -->\s*```json\n(.*?)```", text, re.DOTALL)
    assert block is not None, "docs/protocol.md lost its wave-vectors block"
    return json.loads(block.group(1))


WAVE_VECTORS = _wave_vectors()


def test_the_wave_vectors_cover_boundaries_percentages_and_unicode() -> None:
    assert len(WAVE_VECTORS) >= 12
    assert {tuple(v[2]) for v in WAVE_VECTORS} >= {(100,), (1, 10, 50, 100)}
    assert {99, 100, 999, 1000, 4999, 5000} <= {v[3] for v in WAVE_VECTORS}
    assert any(not (v[0] + v[1]).isascii() for v in WAVE_VECTORS)
    assert any(v[4] == len(v[2]) for v in WAVE_VECTORS)  # a device in no wave


@pytest.mark.parametrize(("rollout_id", "device_id", "waves", "bucket", "index"), WAVE_VECTORS)
def test_wave_membership_known_answers(
    rollout_id: str, device_id: str, waves: list[int], bucket: int, index: int
) -> None:
    assert wave_bucket(rollout_id, device_id) == bucket
    assert wave_index(rollout_id, device_id, waves) == index


def test_wave_membership_is_deterministic_and_cumulative() -> None:
    devices = [f"dev-{i}" for i in range(5000)]
    waves = [wave_index("rollout-7", d, [1, 10, 50, 100]) for d in devices]
    assert waves == [wave_index("rollout-7", d, [1, 10, 50, 100]) for d in devices]
    share = [sum(w <= k for w in waves) / len(devices) for k in range(4)]
    assert 0.002 < share[0] < 0.02 and 0.07 < share[1] < 0.13 and 0.45 < share[2] < 0.55
    assert share[3] == 1.0
    assert len({wave_bucket(f"rollout-{i}", "dev-1") for i in range(20)}) > 10
