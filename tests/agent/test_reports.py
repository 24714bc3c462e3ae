"""The report queue: on disk, in order, capped; the sender prefers MQTT and falls back to HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferry.agent.errors import ServerUnreachableError
from ferry.agent.reports import ReportQueue, ReportSender
from ferry.protocol.documents import AgentState, StatusReport
from tests.agent.conftest import Device
from tests.support.device_repository import DeviceRepository


def _report(n: int) -> StatusReport:
    return StatusReport(f"r-{n}", "dev-1", "main", AgentState.DOWNLOADING, "2026-11-25T03:00:00Z")


def _queue(tmp_path: Path, count: int, cap: int = 100) -> ReportQueue:
    queue = ReportQueue(tmp_path / "reports", cap)
    for n in range(count):
        queue.put(_report(n))
    return queue


def test_queue_keeps_order_and_drops_the_oldest_beyond_its_cap(tmp_path: Path) -> None:
    queue = _queue(tmp_path, 5, cap=3)
    assert [r["report_id"] for _, r in queue.pending(10)] == ["r-2", "r-3", "r-4"]
    reopened = ReportQueue(tmp_path / "reports", 3)  # survives a restart
    assert reopened.count() == 3


def test_sender_uses_mqtt_then_http_for_what_mqtt_did_not_take(tmp_path: Path) -> None:
    queue = _queue(tmp_path, 4)
    published: list[str] = []
    posted: list[str] = []

    def publish(report: dict[str, Any]) -> bool:
        if len(published) == 2:
            return False  # the broker went away after two reports
        published.append(report["report_id"])
        return True

    def post(reports: list[dict[str, Any]]) -> set[str]:
        posted.extend(r["report_id"] for r in reports)
        return {r["report_id"] for r in reports}

    assert ReportSender(queue, publish, post, batch=10, retry_s=1).flush()
    assert (published, posted, queue.count()) == (["r-0", "r-1"], ["r-2", "r-3"], 0)


def test_sender_keeps_everything_while_both_transports_are_down(tmp_path: Path) -> None:
    queue = _queue(tmp_path, 3)

    def post(reports: list[dict[str, Any]]) -> set[str]:
        raise ServerUnreachableError("down")

    assert not ReportSender(queue, lambda r: False, post, batch=10, retry_s=1).flush()
    assert queue.count() == 3


def test_reports_the_server_did_not_acknowledge_stay_queued(tmp_path: Path) -> None:
    queue = _queue(tmp_path, 3)
    sender = ReportSender(queue, lambda r: False, lambda rs: {"r-0"}, batch=10, retry_s=1)
    assert not sender.flush()
    assert [r["report_id"] for _, r in queue.pending(10)] == ["r-1", "r-2"]


def test_terminal_reports_stay_queued_until_the_server_confirms_them(tmp_path: Path) -> None:
    """A broker PUBACK is not the server's word: a restarted broker may have lost it."""
    queue = ReportQueue(tmp_path / "reports", 100)
    queue.put(_report(0))
    queue.put(StatusReport("r-done", "dev-1", "main", AgentState.COMMITTED, "2026-11-25T03:00:00Z"))
    published: list[str] = []
    server_up = False

    def post(reports: list[dict[str, Any]]) -> set[str]:
        if not server_up:
            raise ServerUnreachableError("down")
        return {r["report_id"] for r in reports}

    sender = ReportSender(queue, lambda r: published.append(r["report_id"]) or True, post, 10, 1)
    assert not sender.flush()
    assert [r["report_id"] for _, r in queue.pending(10)] == ["r-done"]
    server_up = True
    assert sender.flush()
    assert published == ["r-0", "r-done", "r-done"] and queue.count() == 0


def test_the_same_report_is_queued_once(tmp_path: Path) -> None:
    queue = _queue(tmp_path, 2)
    queue.put(_report(1))  # repeated after a restart: same id
    assert [r["report_id"] for _, r in queue.pending(10)] == ["r-0", "r-1"]


def test_report_temp_files_left_by_a_kill_are_removed_at_recovery(
    device: Device, repo: DeviceRepository
) -> None:
    folder = device.config.state_dir / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    leftover = folder / ".000000000007-3b1f.json.tmp"  # write_atomic killed before its rename
    leftover.write_bytes(b'{"report_id": "3b1f", "sta')
    device.agent.recover()
    assert not leftover.exists()
    assert device.agent.reports.count() == 0


def test_report_seq_grows_across_restarts_and_an_empty_queue(tmp_path: Path) -> None:
    """The device's own order of its reports survives the agent and an emptied spool."""
    queue = ReportQueue(tmp_path / "reports", 10)
    queue.put(_report(1))
    queue.put(_report(2))
    for path, _ in queue.pending(10):
        queue.remove(path)  # sent and confirmed: the spool is empty
    reopened = ReportQueue(tmp_path / "reports", 10)
    reopened.put(_report(3))
    assert [r["report_seq"] for _, r in reopened.pending(10)] == [3]


def test_a_damaged_report_counter_never_goes_backwards(tmp_path: Path) -> None:
    queue = ReportQueue(tmp_path / "reports", 10)
    queue.put(_report(1))
    (tmp_path / "reports" / "report-seq").write_text("garbage")
    queue.put(_report(2))
    seqs = [r["report_seq"] for _, r in queue.pending(10)]
    assert seqs[0] == 1 and seqs[1] > 1
