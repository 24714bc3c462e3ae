"""Status reports: queued on disk first, then sent in order over MQTT (QoS 1) or HTTP.

A report is a file in the spool folder until the broker acknowledged it (PUBACK)
or the server listed its id as accepted or duplicate; a crash or an offline
spell only delays it. Resending is safe: the server counts a ``report_id`` once.

A broker's PUBACK only says the broker has the message: a broker restarted
without persistence, or a server not yet subscribed again, loses it. The reports
that rollout gates count — the terminal ones — therefore stay queued until the
server itself confirms them over HTTP.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ferry.agent.errors import AgentError
from ferry.agent.storage import remove_temps, write_atomic
from ferry.protocol.documents import TERMINAL_STATES, StatusReport

log = logging.getLogger("ferry.agent.reports")

SEQUENCE_FILE = "report-seq"  # not *.json: never taken for a queued report
SERVER_CONFIRMED = frozenset(state.value for state in TERMINAL_STATES)


class ReportQueue:
    """An ordered on-disk spool: ``<counter>-<report id>.json`` files."""

    def __init__(self, folder: Path, max_queued: int) -> None:
        self.folder = folder
        self.max_queued = max_queued
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("*.json"))

    def put(self, report: StatusReport) -> None:
        """Persist a report before anyone tries to send it; drop the oldest beyond the cap.

        A report whose id is already queued (the same report again, after a restart)
        is not queued twice.
        """
        with self._lock:
            files = self._files()
            if any(path.name.endswith(f"-{report.report_id}.json") for path in files):
                return
            counter = int(files[-1].name.split("-", 1)[0]) + 1 if files else 1
            report = replace(report, report_seq=self._next_report_seq())
            body = json.dumps(report.to_dict(), sort_keys=True).encode("utf-8")
            write_atomic(self.folder / f"{counter:012d}-{report.report_id}.json", body)
            for stale in files[: max(len(files) + 1 - self.max_queued, 0)]:
                log.warning("report_dropped", extra={"fields": {"file": stale.name}})
                stale.unlink(missing_ok=True)

    def _next_report_seq(self) -> int:
        """The device's report counter, persisted before the report that carries it.

        It only ever grows (a restart, an empty queue or a crash between the two
        writes can skip a number, never repeat one), so the server orders this
        device's reports by it whatever the transport (docs/protocol.md).
        """
        path = self.folder / SEQUENCE_FILE
        try:
            last = int(path.read_text().strip() or 0)
        except FileNotFoundError:
            last = 0
        except ValueError:  # damaged: jump to the clock in ms, far above any count so far
            last = int(time.time() * 1000)
        write_atomic(path, f"{last + 1}\n".encode())
        return last + 1

    def pending(self, limit: int) -> list[tuple[Path, dict[str, Any]]]:
        """The oldest ``limit`` reports, in the order they were queued."""
        with self._lock:
            return [(path, json.loads(path.read_bytes())) for path in self._files()[:limit]]

    def sweep(self) -> None:
        """Remove report temp files a kill left behind (call with the agent lock held)."""
        for name in remove_temps(self.folder):
            log.info("temp_removed", extra={"fields": {"file": name}})

    def count(self) -> int:
        return len(self._files())

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)


Publish = Callable[[dict[str, Any]], bool]
Post = Callable[[list[dict[str, Any]]], set[str]]


class ReportSender:
    """Drains the queue in order: MQTT first, HTTP as the fallback, retry while offline."""

    def __init__(
        self, queue: ReportQueue, publish: Publish, post: Post, batch: int, retry_s: float
    ) -> None:
        self.queue = queue
        self.publish = publish
        self.post = post
        self.batch = batch
        self.retry_s = retry_s
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ferry-reports", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.wake.clear()
            self.flush()
            self.wake.wait(self.retry_s)

    def flush(self) -> bool:
        """Send what is queued, oldest first; True when the queue is empty afterwards."""
        while not self._stop.is_set():
            pending = self.queue.pending(self.batch)
            if not pending:
                return True
            remaining = self._send_mqtt(pending)
            if remaining and not self._send_http(remaining):
                return False
        return False

    def _send_mqtt(
        self, pending: list[tuple[Path, dict[str, Any]]]
    ) -> list[tuple[Path, dict[str, Any]]]:
        """Publish in order until the broker fails to acknowledge.

        Returns what still needs the server's word over HTTP: what was not
        published, and the terminal reports that were.
        """
        unconfirmed: list[tuple[Path, dict[str, Any]]] = []
        for index, (path, report) in enumerate(pending):
            if not self.publish(report):
                return unconfirmed + pending[index:]
            if report.get("state") in SERVER_CONFIRMED:
                unconfirmed.append((path, report))
            else:
                self.queue.remove(path)
        return unconfirmed

    def _send_http(self, pending: list[tuple[Path, dict[str, Any]]]) -> bool:
        try:
            known = self.post([report for _, report in pending])
        except AgentError as exc:
            log.info("report_http_failed", extra={"fields": {"error": exc.code}})
            return False
        for path, report in pending:
            if report["report_id"] in known:
                self.queue.remove(path)
        return all(report["report_id"] in known for _, report in pending)
