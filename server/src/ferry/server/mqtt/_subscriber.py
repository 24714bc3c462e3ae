"""Status reports over MQTT: validate in the network thread, ingest in batches, then ack.

The paho thread only parses and checks each message; a worker thread commits
batches through a `StatusSink` (the fleet's ``ingest_reports``) and acknowledges
each message after its batch was committed. A bad message is logged, counted and
acknowledged (a redelivery would be just as bad); it never stops the loop.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ferry.protocol import topics
from ferry.protocol.canonical import parse_json
from ferry.protocol.documents import StatusReport
from ferry.protocol.errors import ProtocolError
from ferry.server.mqtt._metrics import MqttMetrics

log = logging.getLogger("ferry.server.mqtt")

RETRY_DELAY_S = 1.0
MAX_PAYLOAD_BYTES = 64 * 1024


class StatusMessageError(Exception):
    """A status message that cannot be ingested; ``code`` is the metrics outcome."""

    code = "malformed"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Received:
    device_id: str
    report: StatusReport
    mid: int


class StatusSink(Protocol):
    """Commits reports; returns counts per outcome (accepted, duplicate, unknown_device…)."""

    def ingest(self, batch: Sequence[tuple[str, StatusReport]]) -> dict[str, int]: ...


def parse_status_message(topic: str, payload: bytes) -> tuple[str, StatusReport]:
    """The device id from the topic and the validated report it published."""
    device_id = topics.device_id_from_status_topic(topic)
    if device_id is None:
        raise StatusMessageError("malformed", f"not a status topic: {topic!r}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise StatusMessageError("malformed", f"payload of {len(payload)} bytes is too large")
    try:
        report = StatusReport.from_dict(parse_json(payload))
    except ProtocolError as exc:
        raise StatusMessageError("malformed", str(exc)) from exc
    if report.device_id != device_id:
        raise StatusMessageError(
            "topic_mismatch", f"report for {report.device_id!r} on {device_id!r}'s topic"
        )
    return device_id, report


class StatusSubscriber:
    """Feeds `StatusSink` from MQTT; ``ack`` is the link's acknowledgement function."""

    def __init__(self, sink: StatusSink, metrics: MqttMetrics, *, batch_size: int = 200) -> None:
        self.sink = sink
        self.metrics = metrics
        self.batch_size = batch_size
        self.ack: Callable[[int], None] = lambda _mid: None
        self._queue: queue.Queue[Received | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ferry-mqtt-ingest", daemon=True)
        self._stopping = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued (those messages get acknowledged), then stop."""
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout=30)

    def handle(self, topic: str, payload: bytes, mid: int) -> None:
        """Called by the network thread for every message."""
        try:
            device_id, report = parse_status_message(topic, payload)
        except StatusMessageError as exc:
            self.metrics.status_messages.labels(exc.code).inc()
            log.warning(
                "dropped a status message",
                extra={"fields": {"topic": topic, "outcome": exc.code, "reason": str(exc)[:300]}},
            )
            self.ack(mid)
            return
        self._queue.put(Received(device_id, report, mid))

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch:
                self._ingest(batch)
            if self._stopping.is_set() and self._queue.empty():
                return

    def _next_batch(self) -> list[Received]:
        first = self._queue.get()
        batch = [first] if first is not None else []
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                batch.append(item)
        return batch

    def _ingest(self, batch: list[Received]) -> None:
        """Commit, count, then ack; retry while the database is unavailable."""
        while True:
            try:
                outcome = self.sink.ingest([(item.device_id, item.report) for item in batch])
                break
            except Exception:  # a database outage must not kill the loop
                self.metrics.status_messages.labels("ingest_error").inc(len(batch))
                log.exception("status ingest failed; retrying")
                if self._stopping.wait(RETRY_DELAY_S):
                    return  # unacknowledged: the broker redelivers to the next session
        for name, count in outcome.items():
            self.metrics.status_messages.labels(name).inc(count)
        for item in batch:
            self.ack(item.mid)
