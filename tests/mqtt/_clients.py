"""Test-side MQTT clients (paho) that record what they receive, and a recording sink."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ferry.protocol.documents import AgentState, StatusReport
from ferry.protocol.timefmt import format_time, utcnow
from ferry.server.mqtt import mosquitto_hash, parse_url

WAIT_S = 10.0
_ids = itertools.count()


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Peer:
    """One MQTT client: connect, subscribe, publish (each waits for the broker's answer)."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
    ) -> None:
        self.host, self.port = parse_url(url)
        self.messages: list[tuple[str, bytes, bool]] = []
        self.connack: mqtt.ReasonCode | None = None
        self.granted: list[int] = []
        self.disconnects = 0
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subacked = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"test-peer-{next(_ids)}"
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect

    def connect(self) -> bool:
        """True when the broker accepted the login."""
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self._connected.wait(WAIT_S)
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic: str) -> list[int]:
        self._subacked.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subacked.wait(WAIT_S), f"no SUBACK for {topic}"
        return self.granted

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT_S)

    def received(self, topic: str | None = None) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if topic is None or t == topic]

    def wait_for(self, topic: str, count: int = 1) -> bool:
        return wait_until(lambda: len(self.received(topic)) >= count)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object
    ) -> None:
        self.connack = reason
        self._connected.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, _r: object, _p: object
    ) -> None:
        self.disconnects += 1

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, _mid: int, codes: list[mqtt.ReasonCode], _p: object
    ) -> None:
        self.granted = [code.value for code in codes]
        self._subacked.set()


def status_report(
    device_id: str, state: AgentState = AgentState.DOWNLOADING, report_id: str | None = None
) -> StatusReport:
    return StatusReport(
        report_id=report_id or f"r-{next(_ids)}",
        device_id=device_id,
        slot="main",
        state=state,
        at=format_time(utcnow()),
        to_version=2,
    )


@dataclass
class RecordingSink:
    """A StatusSink that keeps reports of known devices, once per report id."""

    known: set[str]
    reports: list[StatusReport] = field(default_factory=list)
    fail_next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ingest(self, batch: Sequence[tuple[str, StatusReport]]) -> dict[str, int]:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise RuntimeError("database unavailable")
            outcome = {"accepted": 0, "duplicate": 0, "unknown_device": 0}
            seen = {r.report_id for r in self.reports}
            for device_id, report in batch:
                if device_id not in self.known:
                    outcome["unknown_device"] += 1
                elif report.report_id in seen:
                    outcome["duplicate"] += 1
                else:
                    seen.add(report.report_id)
                    self.reports.append(report)
                    outcome["accepted"] += 1
            return outcome

    def ids(self) -> list[str]:
        with self._lock:
            return [r.report_id for r in self.reports]


@dataclass
class Directory:
    """The fleet's broker logins as the MQTT service sees them; keeps the plaintext for tests."""

    passwords: dict[str, str]

    def password_hash(self, device_id: str) -> str | None:
        password = self.passwords.get(device_id)
        return None if password is None else mosquitto_hash(password, os.urandom(12))

    def logins(self) -> list[tuple[str, str]]:
        return [
            (device_id, mosquitto_hash(pw, os.urandom(12)))
            for device_id, pw in sorted(self.passwords.items())
        ]
