"""The ingest thread lingers for more reports after the first of a batch (no broker needed).

In a rollout, reports arrive a few at a time; without the linger each one was its own
transaction. What must not change: a full batch goes at once, stopping does not wait,
and every message is acknowledged once, only after the batch holding it committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from prometheus_client import CollectorRegistry

from ferry.protocol import topics
from ferry.protocol.canonical import canonical_json
from ferry.protocol.documents import StatusReport
from ferry.server.mqtt import MqttMetrics, StatusSubscriber
from tests.mqtt._clients import RecordingSink, status_report, wait_until


class BatchSink(RecordingSink):
    """A `RecordingSink` that also keeps the size of every batch it committed."""

    def __init__(self, known: set[str], fail_next: int = 0) -> None:
        super().__init__(known, fail_next=fail_next)
        self.batches: list[int] = []

    def ingest(self, batch: Sequence[tuple[str, StatusReport]]) -> dict[str, int]:
        outcome = super().ingest(batch)
        self.batches.append(len(batch))
        return outcome


class Acks:
    """The acknowledged message ids, each with how many reports the sink held by then."""

    def __init__(self, sink: RecordingSink) -> None:
        self.sink = sink
        self.seen: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __call__(self, mid: int) -> None:
        with self._lock:
            self.seen.append((mid, len(self.sink.ids())))

    def mids(self) -> list[int]:
        with self._lock:
            return [mid for mid, _ in self.seen]


def _subscriber(sink: RecordingSink, linger_s: float, batch_size: int = 50) -> StatusSubscriber:
    metrics = MqttMetrics(CollectorRegistry())
    return StatusSubscriber(sink, metrics, batch_size=batch_size, linger_s=linger_s)


@pytest.fixture
def sink() -> BatchSink:
    return BatchSink({"dev-a"})


@pytest.fixture
def running(request: pytest.FixtureRequest, sink: BatchSink) -> Iterator[StatusSubscriber]:
    subscriber = _subscriber(sink, *request.param)
    subscriber.start()
    yield subscriber
    subscriber.stop()


def _handle(subscriber: StatusSubscriber, mid: int) -> None:
    report = status_report("dev-a")
    subscriber.handle(topics.device_status("dev-a"), canonical_json(report.to_dict()), mid)


@pytest.mark.parametrize("running", [(0.5,)], indirect=True)
def test_reports_arriving_within_the_linger_share_one_transaction(
    running: StatusSubscriber, sink: BatchSink
) -> None:
    acks = running.ack = Acks(sink)
    for mid in range(1, 6):
        _handle(running, mid)
        time.sleep(0.02)
    assert wait_until(lambda: len(acks.mids()) == 5)
    assert sink.batches == [5]


@pytest.mark.parametrize("running", [(30.0, 3)], indirect=True)
def test_a_full_batch_goes_without_waiting_for_the_linger(
    running: StatusSubscriber, sink: BatchSink
) -> None:
    acks = running.ack = Acks(sink)
    for mid in range(1, 4):
        _handle(running, mid)
    assert wait_until(lambda: acks.mids() == [1, 2, 3], timeout=5)
    assert sink.batches == [3]


def test_stopping_ends_the_linger_and_acknowledges_what_was_queued(sink: BatchSink) -> None:
    subscriber = _subscriber(sink, 30.0)
    acks = subscriber.ack = Acks(sink)
    subscriber.start()
    _handle(subscriber, 7)
    started = time.monotonic()
    subscriber.stop()
    assert time.monotonic() - started < 5
    assert acks.mids() == [7] and len(sink.ids()) == 1


def test_a_failed_lingered_batch_is_retried_whole_and_acknowledged_only_after_it_committed() -> (
    None
):
    sink = BatchSink({"dev-a"}, fail_next=1)
    subscriber = _subscriber(sink, 0.3)
    acks = subscriber.ack = Acks(sink)
    subscriber.start()
    try:
        for mid in (1, 2, 3):
            _handle(subscriber, mid)
        assert wait_until(lambda: len(acks.mids()) == 3)
    finally:
        subscriber.stop()
    assert sink.batches == [3]  # the failed attempt committed nothing and acknowledged nothing
    assert acks.seen == [(1, 3), (2, 3), (3, 3)]
