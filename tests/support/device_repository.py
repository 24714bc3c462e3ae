"""A repository simulator: the server's Device API over real HTTP, bendable per test.

Like python-tuf's ``tests/repository_simulator.py``, it signs on demand with an
:class:`~tests.support.trust.Authority` and can be told to serve an attack: an
expired or stranger-signed document, a replayed directive, endless data, a
truncated or corrupted blob. It is a real ``ThreadingHTTPServer`` on a free port,
so the agent's HTTP stack (Range, streaming, timeouts) is exercised for real,
and it can be stopped and restarted on the same port for outage drills.

It records what the agent did: every request (with its ``Range``), every status
report received over HTTP or (when attached to a broker) over MQTT, counted by
``report_id``, and how many bytes each blob response managed to send.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ferry.protocol import endpoints, topics
from ferry.protocol.canonical import canonical_json
from ferry.protocol.documents import BundleManifest, DeltaDescriptor, DesiredState
from ferry.protocol.signing import document_digest, envelope_bytes, sign_document
from ferry.protocol.timefmt import format_time, utcnow
from tests.support.mosquitto import free_port
from tests.support.trust import Authority

DELTA_PREFIX = f"{endpoints.API}/deltas/"

# How a blob is served; tests set ``repo.blob_mode[sha256]``.
HONEST = "honest"
ENDLESS = "endless"  # the declared bytes, then more, for ever (no Content-Length)
TRUNCATED = "truncated"  # the first half only, with a Content-Length to match
CORRUPT = "corrupt"  # same length, one byte flipped
SLOW = "slow"  # honest but throttled (for killing the agent mid-download)
TRICKLE = "trickle"  # honest, one byte every ``trickle_delay_s`` (slow retrieval)
STALE_RANGE = "stale_range"  # 416 to every Range request, honest without one
RANGE_REFUSED = "range_refused"  # 416 to every request, Range or not (a broken server)


@dataclass
class Bundle:
    """A signed bundle the simulator can serve."""

    manifest: BundleManifest
    envelope: dict[str, Any]
    digest: str
    files: dict[str, bytes]


@dataclass
class Received:
    """Status reports that arrived, over either transport."""

    reports: list[dict[str, Any]] = field(default_factory=list)
    via: Counter[str] = field(default_factory=Counter)

    def ids(self) -> Counter[str]:
        return Counter(r["report_id"] for r in self.reports)

    def unique(self) -> list[dict[str, Any]]:
        """One report per id, in arrival order (what the server would store)."""
        seen: set[str] = set()
        out = []
        for report in self.reports:
            if report["report_id"] not in seen:
                seen.add(report["report_id"])
                out.append(report)
        return out


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-request (an agent cutting off an attack) is not an error."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class DeviceRepository:
    """Serves keyrings, desired states, manifests, blobs and deltas; ingests status reports."""

    def __init__(
        self,
        authority: Authority | None = None,
        *,
        device_id: str = "dev-0001",
        groups: tuple[str, ...] = ("canary",),
        poll_interval_s: int = 1,
    ) -> None:
        self.authority = authority or Authority()
        self.device_id = device_id
        self.groups = groups
        self.poll_interval_s = poll_interval_s
        self.enrollment_token = "enroll-" + secrets.token_hex(8)
        self.credential = "frd_" + secrets.token_hex(16)
        self.keyrings: dict[int, dict[str, Any]] = {1: self.authority.signed_keyring()}
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        self.deltas: dict[tuple[str, str], bytes] = {}
        self.described: dict[tuple[str, str], tuple[bytes, int]] = {}
        self.blob_mode: dict[str, str] = {}
        self.slow_chunk_delay_s = 0.02
        self.trickle_delay_s = 0.02
        self.bytes_sent: Counter[str] = Counter()
        self.sequence = 0
        self.desired: bytes | None = None
        self.mqtt_url: str | None = None
        self.received = Received()
        self.requests: list[tuple[str, str, str | None]] = []
        self.enrollments: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self._server: ThreadingHTTPServer | None = None
        self._listener: mqtt.Client | None = None
        self.listener_connected = threading.Event()
        self.notice_group: str | None = None
        self.connections: set[socket.socket] = set()
        self.overrides: dict[str, bytes] = {}  # path → exactly these bytes (e.g. oversized)
        self.set_empty_desired_state()

    # --- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DeviceRepository:
        """Listen (again) on the same port: an outage ends."""
        handler = type("Handler", (_Handler,), {"repo": self})
        self._server = _QuietServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open keep-alive connections: the agent sees the server gone."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            connections, self.connections = self.connections, set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.stop()
        if self._listener is not None:
            self._listener.loop_stop()
            self._listener.disconnect()
            self._listener = None

    # --- MQTT -----------------------------------------------------------------------

    def attach_broker(self, url: str) -> None:
        """Give devices this broker at enrolment, listen to their status, publish notices.

        The listener keeps a persistent session (``clean_session=False``, QoS 1), as the
        real server does, so reports published while it is reconnecting are queued by
        the broker rather than lost.
        """
        self.mqtt_url = url
        host, port = url.removeprefix("mqtt://").split(":")
        listener = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sim-{secrets.token_hex(4)}",
            clean_session=False,
        )
        ready = self.listener_connected

        def on_connect(client: mqtt.Client, *_: Any) -> None:
            client.subscribe(topics.ALL_DEVICE_STATUS, qos=1)
            ready.set()

        def on_disconnect(client: mqtt.Client, *_: Any) -> None:
            ready.clear()

        def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            self._ingest([json.loads(message.payload)], "mqtt")

        listener.on_connect = on_connect
        listener.on_disconnect = on_disconnect
        listener.on_message = on_message
        listener.reconnect_delay_set(1, 2)
        listener.connect_async(host, int(port))
        listener.loop_start()
        ready.wait(10)
        self._listener = listener

    def notify(self) -> None:
        """Publish a retained notice to the device, or to ``notice_group`` when set (one per wave)."""
        if self._listener is None:
            return
        topic = (
            topics.group_notice(self.notice_group)
            if self.notice_group
            else topics.device_notice(self.device_id)
        )
        notice = {"_type": "notice", "spec_version": 1, "reason": "desired-state",
                  "rollout_id": None, "issued_at": format_time(utcnow())}  # fmt: skip
        self._listener.publish(topic, json.dumps(notice), qos=1, retain=True)

    # --- content --------------------------------------------------------------------

    def add_bundle(
        self,
        files: dict[str, bytes],
        *,
        version: int,
        hardware: tuple[str, ...] = ("x86_64",),
        model: str = "vision/detector",
        signer: Any = None,
    ) -> Bundle:
        manifest = self.authority.manifest(files, version=version, hardware=hardware, model=model)
        envelope = self.authority.signed_manifest(manifest, signer)
        digest = document_digest(manifest.to_dict())
        with self.lock:
            self.manifests[digest] = envelope_bytes(envelope)
            for data in files.values():
                self.blobs[hashlib.sha256(data).hexdigest()] = data
        return Bundle(manifest, envelope, digest, files)

    def add_delta(
        self, old: bytes, new: bytes, delta: bytes, described: bytes | None = None
    ) -> None:
        """Serve ``delta`` for old → new; its signed descriptor names ``described`` (default:
        the delta itself), so a test can serve bytes the descriptor does not vouch for."""
        key = (hashlib.sha256(old).hexdigest(), hashlib.sha256(new).hexdigest())
        self.deltas[key] = delta
        self.described[key] = (described if described is not None else delta, len(new))

    def delta_descriptor(self, path: str) -> bytes | None:
        """The signed descriptor the server's ``GET …/descriptor`` route answers."""
        route, _, query = path.partition("?")
        old, new = route.removeprefix(DELTA_PREFIX).removesuffix("/descriptor").split("/")
        if (old, new) not in self.described:
            return None
        vouched, size = self.described[(old, new)]
        args = dict(parse_qsl(query))
        descriptor = DeltaDescriptor(
            from_manifest=args["from_manifest"],
            to_manifest=args["to_manifest"],
            path=args["path"],
            from_sha256=old,
            to_sha256=new,
            to_size=size,
            delta_sha256=hashlib.sha256(vouched).hexdigest(),
            delta_size=len(vouched),
        )
        return envelope_bytes(sign_document(descriptor.to_dict(), [self.authority.bundles]))

    def desired_state(
        self,
        targets: dict[str, Bundle],
        *,
        sequence: int | None = None,
        device_id: str | None = None,
        expires_in: timedelta = timedelta(hours=1),
        allow_downgrade: bool = False,
    ) -> DesiredState:
        if sequence is None:
            self.sequence += 1
            sequence = self.sequence
        return self.authority.desired_state(
            device_id or self.device_id,
            sequence,
            {slot: bundle.manifest for slot, bundle in targets.items()},
            expires_in=expires_in,
            allow_downgrade=allow_downgrade,
        )

    def target(self, targets: dict[str, Bundle], *, signer: Any = None, **kwargs: Any) -> bytes:
        """Sign and serve a new desired state (next sequence) and send a notice."""
        raw = envelope_bytes(
            self.authority.signed_desired_state(self.desired_state(targets, **kwargs), signer)
        )
        self.serve_desired(raw)
        return raw

    def serve_desired(self, raw: bytes) -> None:
        """Serve exactly these bytes as the desired state (e.g. a replayed old one)."""
        with self.lock:
            self.desired = raw
        self.notify()

    def set_empty_desired_state(self) -> None:
        self.target({})

    def publish_keyring(self, envelope: dict[str, Any], version: int) -> None:
        with self.lock:
            self.keyrings[version] = envelope

    # --- request handling -----------------------------------------------------------

    def _ingest(self, reports: list[dict[str, Any]], via: str) -> tuple[list[str], list[str]]:
        with self.lock:
            known = {r["report_id"] for r in self.received.reports}
            accepted, duplicates = [], []
            for report in reports:
                (duplicates if report["report_id"] in known else accepted).append(
                    report["report_id"]
                )
                known.add(report["report_id"])
                self.received.reports.append(report)
                self.received.via[via] += 1
        return accepted, duplicates

    def reports_for(self, slot: str) -> list[dict[str, Any]]:
        return [r for r in self.received.unique() if r["slot"] == slot]

    def states(self, slot: str = "main") -> list[str]:
        return [r["state"] for r in self.reports_for(slot)]

    def wait_for(
        self, condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
    ) -> None:
        """Wait for the agent to get somewhere; raises (failing the test) at the deadline."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; reports: {self.states()}")
            time.sleep(0.05)


class _Handler(BaseHTTPRequestHandler):
    repo: DeviceRepository
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output clean
        return

    def setup(self) -> None:
        super().setup()
        with self.repo.lock:
            self.repo.connections.add(self.connection)

    def finish(self) -> None:
        with self.repo.lock:
            self.repo.connections.discard(self.connection)
        super().finish()

    # --- helpers --------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str) -> None:
        self._send(
            status, canonical_json({"error": {"code": code, "message": code, "details": None}})
        )

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.repo.credential}":
            self._error(401, "unauthenticated")
            return False
        return True

    # --- routes ---------------------------------------------------------------------

    def do_GET(self) -> None:
        repo, path = self.repo, self.path
        repo.requests.append(("GET", path, self.headers.get("Range")))
        if path in repo.overrides:
            self._send(200, repo.overrides[path])
        elif path == endpoints.KEYRING:
            self._send(200, envelope_bytes(repo.keyrings[max(repo.keyrings)]))
        elif path.startswith(endpoints.KEYRING + "/"):
            version = int(path.rsplit("/", 1)[1])
            if version in repo.keyrings:
                self._send(200, envelope_bytes(repo.keyrings[version]))
            else:
                self._error(404, "not_found")
        elif not self._authorized():
            return
        elif path == endpoints.DESIRED_STATE:
            self._send(200, repo.desired or b"")
        elif path.startswith(endpoints.MANIFEST.format(sha256="")):
            body = repo.manifests.get(path.rsplit("/", 1)[1])
            self._send(200, body) if body is not None else self._error(404, "not_found")
        elif path.startswith(endpoints.BLOB.format(sha256="")):
            self._blob(path.rsplit("/", 1)[1])
        elif path.startswith(DELTA_PREFIX) and "/descriptor?" in path:
            body = repo.delta_descriptor(path)
            self._send(200, body) if body is not None else self._error(404, "not_found")
        elif path.startswith(DELTA_PREFIX):
            old, new = path.removeprefix(DELTA_PREFIX).split("/")
            body = repo.deltas.get((old, new))
            self._send(200, body, "application/octet-stream") if body else self._error(
                404, "not_found"
            )
        else:
            self._error(404, "not_found")

    def _blob(self, sha256: str) -> None:
        data = self.repo.blobs.get(sha256)
        if data is None:
            self._error(404, "not_found")
            return
        mode = self.repo.blob_mode.get(sha256, HONEST)
        if mode == ENDLESS:
            self._endless(sha256, data)
            return
        if mode == TRUNCATED:
            data = data[: len(data) // 2]
        elif mode == CORRUPT:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        start = self._range_start()
        if mode == RANGE_REFUSED or (mode == STALE_RANGE and start is not None):
            self._error(416, "range_not_satisfiable")
            return
        if start is not None and start >= len(data):
            self._error(416, "range_not_satisfiable")
            return
        self.send_response(206 if start else 200)
        body = memoryview(data)[start or 0 :]
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == TRICKLE:
            self._write_chunks(sha256, body, delay=self.repo.trickle_delay_s, step=1)
        else:
            self._write_chunks(sha256, body, self.repo.slow_chunk_delay_s if mode == SLOW else 0)

    def _range_start(self) -> int | None:
        header = self.headers.get("Range")
        if not header or not header.startswith("bytes="):
            return None
        return int(header.removeprefix("bytes=").split("-")[0])

    def _write_chunks(
        self, sha256: str, body: memoryview, delay: float, step: int = 64 << 10
    ) -> None:
        try:
            for offset in range(0, len(body), step):
                self.wfile.write(body[offset : offset + step])
                self.wfile.flush()
                self.repo.bytes_sent[sha256] += len(body[offset : offset + step])
                if delay:
                    time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _endless(self, sha256: str, data: bytes) -> None:
        """The declared bytes, then garbage until the client hangs up (capped at 1 GiB)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        filler = b"\0" * (64 << 10)
        try:
            self.wfile.write(data)
            self.repo.bytes_sent[sha256] += len(data)
            while self.repo.bytes_sent[sha256] < 1 << 30:
                self.wfile.write(filler)
                self.repo.bytes_sent[sha256] += len(filler)
        except (BrokenPipeError, ConnectionResetError):
            return

    def do_POST(self) -> None:
        repo = self.repo
        repo.requests.append(("POST", self.path, None))
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path == endpoints.ENROLL:
            self._enroll(body)
        elif self.path == endpoints.STATUS:
            if not self._authorized():
                return
            if any(r.get("device_id") != repo.device_id for r in body["reports"]):
                self._error(403, "forbidden")
                return
            accepted, duplicates = repo._ingest(body["reports"], "http")
            self._send(200, canonical_json({"accepted": accepted, "duplicates": duplicates}))
        else:
            self._error(404, "not_found")

    def _enroll(self, body: dict[str, Any]) -> None:
        repo = self.repo
        if body.get("enrollment_token") != repo.enrollment_token:
            self._error(401, "unauthenticated")
            return
        repo.enrollments.append(body)
        mqtt_section = (
            {"url": repo.mqtt_url, "username": "", "password": ""} if repo.mqtt_url else None
        )
        answer = {
            "device_id": body.get("device_id") or repo.device_id,
            "credential": repo.credential,
            "keyring": repo.keyrings[max(repo.keyrings)],
            "groups": list(repo.groups),
            "mqtt": mqtt_section,
            "poll_interval_s": repo.poll_interval_s,
        }
        self._send(201, canonical_json(answer))
