"""`ferry simulate`: a fleet of simulated devices speaking the real protocol.

Every simulated device enrols over HTTP, pins the root from its first keyring,
verifies its signed desired state and each bundle manifest with
`ferry.protocol.verify`, and reports every state transition (downloading →
verifying → staged → switching → probing → committed, or rolled_back) as a
`StatusReport` over MQTT at QoS 1, falling back to HTTP when its broker
connection is down. It learns of changes from MQTT notices and from jittered
HTTP polling, so it converges with the broker down too.

What it fetches: the signed manifest always; the blob bytes for a sample of the
devices (``--verify-sample``, at least one device), streamed through
`FileVerifier` (length and sha256); the rest send ``HEAD`` for each file and
check its length. Nothing is written to disk.

Scale: one asyncio loop drives every device. HTTP goes through one
`httpx.AsyncClient` (bounded connection pool); each device has its own paho
client, but no thread — paho's sockets are registered with the event loop
(``loop_read``/``loop_write``/``loop_misc``), so thousands of devices fit in one
process (see docs/demo.md for figures).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
import typer
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from ferry.protocol import endpoints, topics
from ferry.protocol.documents import (
    TERMINAL_STATES,
    AgentState,
    BundleManifest,
    DesiredState,
    StatusReport,
)
from ferry.protocol.errors import (
    LengthExceededError,
    ProtocolError,
    TruncatedError,
    UntrustedKeyError,
)
from ferry.protocol.timefmt import format_time, utcnow
from ferry.protocol.trust import TrustedState
from ferry.protocol.verify import FileVerifier, SequenceFloor

AGENT_VERSION = "ferry-simulator/1"
FAIL_MARKER = "FAIL_PROBE"  # a bundle containing this file fails every health probe
STEPS = (AgentState.VERIFYING, AgentState.STAGED, AgentState.SWITCHING, AgentState.PROBING)
MQTT_KEEPALIVE_S = 60
MQTT_MISC_S = 10.0  # keep-alive checks; the keep-alive itself is 60 s
HTTP_TIMEOUT_S = 30.0
MAX_BACKOFF_S = 10.0
ENROLL_ATTEMPTS = 8

app = typer.Typer()


class SimulationError(Exception):
    """The simulator cannot run (enrolment refused, bad arguments)."""

    code = "simulation_failed"


@dataclass(frozen=True)
class SimConfig:
    server: str
    enrollment_token: str
    devices: int
    fail_rate: float = 0.0
    hardware: str = "x86_64"
    tags: dict[str, str] = field(default_factory=dict)
    prefix: str = "sim"
    verify_sample: float = 0.05
    poll_interval_s: float | None = None  # None: what enrolment says
    step_delay_s: float = 0.05  # time spent in each state (0 for benchmarks)
    mqtt: bool = True
    http_connections: int = 64
    enroll_concurrency: int = 32
    seed: int = 0
    # Local addresses the devices' MQTT connections start from, in turn: one address
    # gives at most ~28,000 connections to one broker port (the ephemeral port range).
    source_addresses: tuple[str, ...] = ()


@dataclass
class Stats:
    """What the fleet did; the CLI prints it, tests and benchmarks read it."""

    enrolled: int = 0
    reports_made: int = 0  # distinct reports the devices made (each sent until it lands)
    reports_mqtt: int = 0
    reports_http: int = 0
    desired_state_fetches: int = 0
    notices: int = 0
    bytes_verified: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    states: dict[str, str] = field(default_factory=dict)  # device → last state
    versions: dict[str, int] = field(default_factory=dict)  # device → installed version

    def summary(self) -> dict[str, Any]:
        return {
            "enrolled": self.enrolled,
            "reports_made": self.reports_made,
            "reports_mqtt": self.reports_mqtt,
            "reports_http": self.reports_http,
            "desired_state_fetches": self.desired_state_fetches,
            "notices": self.notices,
            "bytes_verified": self.bytes_verified,
            "refusals": dict(self.refusals),
            "states": dict(Counter(self.states.values())),
            "versions": {str(v): n for v, n in sorted(Counter(self.versions.values()).items())},
            "installed": dict(sorted(self.versions.items())),
        }


# --- paho on the asyncio loop -------------------------------------------------------------


class LoopMqtt:
    """One paho client whose socket is watched by the asyncio loop — no thread per device."""

    def __init__(
        self,
        url: str,
        client_id: str,
        username: str,
        password: str,
        subscriptions: list[str],
        on_notice: Callable[[bytes], None],
        bind_address: str = "",
    ) -> None:
        parts = urlsplit(url)
        self.bind_address = bind_address
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.subscriptions = subscriptions
        self.on_notice = on_notice
        self.loop = asyncio.get_running_loop()
        self.connected = False
        self._accepted = False
        self._lost = asyncio.Event()
        self._misc: asyncio.Task[None] | None = None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        client.username_pw_set(username, password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = lambda _c, _u, message: self.on_notice(bytes(message.payload))
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._socket_register_write
        client.on_socket_unregister_write = self._socket_unregister_write
        self.client = client

    def publish(self, topic: str, payload: bytes) -> bool:
        """QoS 1; False when not connected (the caller then uses HTTP)."""
        if not self.connected:
            return False
        return self.client.publish(topic, payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop``; back off (jittered) after a refused or lost session."""
        delay = 0.5
        while not stop.is_set():
            self._lost.clear()
            self._accepted = False
            try:
                self.client.connect(
                    self.host,
                    self.port,
                    keepalive=MQTT_KEEPALIVE_S,
                    bind_address=self.bind_address,
                )
            except OSError:
                pass
            else:
                lost = asyncio.ensure_future(self._lost.wait())
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
                lost.cancel()
                stopping.cancel()
            if self._accepted:
                delay = 0.5
            await _sleep_or_stop(stop, delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, MAX_BACKOFF_S)
        if self.connected:
            self.client.disconnect()

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        if reason.is_failure:
            self._lost.set()
            return
        self.connected = self._accepted = True
        client.subscribe([(topic, 1) for topic in self.subscriptions])

    def _on_disconnect(self, *_: object) -> None:
        self.connected = False
        self._lost.set()

    def _socket_open(self, client: mqtt.Client, _u: object, sock: mqtt.SocketLike) -> None:
        self.loop.add_reader(sock, client.loop_read)
        self._misc = self.loop.create_task(self._misc_loop())

    def _socket_register_write(
        self, client: mqtt.Client, _u: object, sock: mqtt.SocketLike
    ) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def _socket_unregister_write(self, _c: mqtt.Client, _u: object, sock: mqtt.SocketLike) -> None:
        self.loop.remove_writer(sock)

    def _socket_close(self, _c: mqtt.Client, _u: object, sock: mqtt.SocketLike) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)
        if self._misc is not None:
            self._misc.cancel()
        self._lost.set()

    async def _misc_loop(self) -> None:
        """Keep-alive pings and retries, which paho's own thread would otherwise do."""
        await asyncio.sleep(random.uniform(0, MQTT_MISC_S))  # spread the fleet's wake-ups
        while self.client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:
            await asyncio.sleep(MQTT_MISC_S)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


# --- one simulated device -------------------------------------------------------------------


@dataclass
class Installed:
    version: int
    manifest_sha256: str


class SimDevice:
    """A device without disk: the agent's protocol steps, with simulated install and probe."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.cfg = fleet.cfg
        self.device_id = f"{self.cfg.prefix}-{index:05d}"
        sources = self.cfg.source_addresses
        self.source_address = sources[index % len(sources)] if sources else ""
        self.full_download = index == 0 or fleet.rng.random() < self.cfg.verify_sample
        self.credential = ""
        self.trust: TrustedState | None = None
        self.groups: list[str] = []
        self.poll_interval_s = 60.0
        self.mqtt: LoopMqtt | None = None
        self.wake = asyncio.Event()
        self.floor = SequenceFloor()
        self.installed: dict[str, Installed] = {}
        self.refused: set[tuple[str, int, str]] = set()  # (slot, sequence, digest) given up on
        self.report_seq = itertools.count(1)  # the device's own report order (in memory)
        self.notice_epoch: int | None = None  # sent back so a lagging replica skips its cache

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"}

    async def enroll(self) -> None:
        body = {
            "enrollment_token": self.cfg.enrollment_token,
            "device_id": self.device_id,
            "hardware": self.cfg.hardware,
            "agent_version": AGENT_VERSION,
            "tags": self.cfg.tags,
        }
        data = await self._enroll_request(body)
        self.credential = data["credential"]
        self.trust = TrustedState.first(data["keyring"], utcnow())
        self.groups = list(data.get("groups") or [])
        self.poll_interval_s = self.cfg.poll_interval_s or float(data.get("poll_interval_s") or 60)
        broker = data.get("mqtt")
        if self.cfg.mqtt and broker:
            subs = [topics.device_notice(self.device_id)] + [
                topics.group_notice(g) for g in self.groups
            ]
            self.mqtt = LoopMqtt(
                broker["url"],
                self.device_id,
                broker["username"],
                broker["password"],
                subs,
                self._noticed,
                self.source_address,
            )
        self.fleet.stats.enrolled += 1
        self.fleet.stats.states[self.device_id] = AgentState.IDLE.value

    async def _enroll_request(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST the enrolment; a busy or unreachable server is retried, a refusal is not."""
        delay = 0.5
        for _ in range(ENROLL_ATTEMPTS):
            try:
                response = await self.fleet.request("POST", endpoints.ENROLL, json=body)
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code == 201:
                data: dict[str, Any] = response.json()
                return data
            if response is not None and response.status_code < 500:
                raise SimulationError(
                    f"enrolment of {self.device_id} refused: "
                    f"{response.status_code} {response.text[:300]}"
                )
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, MAX_BACKOFF_S)
        raise SimulationError(
            f"enrolment of {self.device_id}: no answer after {ENROLL_ATTEMPTS} attempts"
        )

    def _noticed(self, payload: bytes) -> None:
        self.fleet.stats.notices += 1
        epoch = topics.notice_epoch(payload)
        if epoch is not None and (self.notice_epoch is None or epoch > self.notice_epoch):
            self.notice_epoch = epoch
        self.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch the desired state at start, on every notice and at each jittered poll."""
        tasks = [asyncio.ensure_future(self.mqtt.run(stop))] if self.mqtt else []
        backoff = 0.5
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.sync()
                backoff, delay = 0.5, self.poll_interval_s * random.uniform(0.8, 1.2)
            except httpx.HTTPError:
                # Server unreachable or failing: keep the current model, retry with backoff.
                delay, backoff = backoff * random.uniform(0.5, 1.5), min(backoff * 2, MAX_BACKOFF_S)
            wake = asyncio.ensure_future(self.wake.wait())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({wake, stopping}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            stopping.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def sync(self) -> None:
        extra = (
            {topics.NOTICE_EPOCH_HEADER: str(self.notice_epoch)}
            if self.notice_epoch is not None
            else {}
        )
        raw = await self._get(endpoints.DESIRED_STATE, extra)
        self.fleet.stats.desired_state_fetches += 1
        try:
            state = await self._verified_state(raw)
        except ProtocolError as exc:
            self.fleet.stats.refusals[exc.code] += 1
            return
        for slot, target in sorted(state.slots.items()):
            current = self.installed.get(slot)
            key = (slot, state.sequence, target.manifest_sha256)
            if (
                current and current.manifest_sha256 == target.manifest_sha256
            ) or key in self.refused:
                continue
            if not await self.update(state, slot):
                self.refused.add(key)

    async def _verified_state(self, raw: bytes) -> DesiredState:
        """Verify; on an unknown director key, first catch up with the keyring once."""
        try:
            return self._verify_state(raw)
        except UntrustedKeyError:
            await self._refresh_keyring()
            return self._verify_state(raw)

    def _verify_state(self, raw: bytes) -> DesiredState:
        assert self.trust is not None
        verified = self.trust.verify_desired_state(
            raw, device_id=self.device_id, floor=self.floor, now=utcnow()
        )
        self.floor = SequenceFloor.accepted(verified)
        return verified.document

    async def _refresh_keyring(self) -> None:
        """The protocol's keyring walk (root rotations chain), its versions fetched first."""
        assert self.trust is not None
        latest = await self._keyring(None)
        walk = {v: await self._keyring(v) for v in self.trust.missing_versions(latest)}
        self.trust.refresh_keyring(latest, walk.__getitem__, utcnow())

    async def _keyring(self, version: int | None) -> bytes:
        path = (
            endpoints.KEYRING
            if version is None
            else endpoints.KEYRING_VERSION.format(version=version)
        )
        response = await self.fleet.request("GET", path)
        response.raise_for_status()
        return response.content

    async def update(self, state: DesiredState, slot: str) -> bool:
        """One update, reported step by step; True when it ended committed."""
        target = state.slots[slot]
        current = self.installed.get(slot)
        report = self._reporter(state, slot, current.version if current else None, target.version)
        await report(AgentState.DOWNLOADING)
        try:
            manifest = await self._manifest(
                target.manifest_sha256, target.allow_downgrade, current.version if current else None
            )
            downloaded = await self._fetch(manifest)
        except ProtocolError as exc:
            self.fleet.stats.refusals[exc.code] += 1
            await report(AgentState.FAILED, error_code=exc.code, detail=str(exc)[:500])
            return False
        for step in STEPS:
            await asyncio.sleep(self.cfg.step_delay_s)
            await report(step, downloaded=downloaded)
        if self._probe_fails(manifest):
            await report(
                AgentState.ROLLED_BACK,
                error_code="probe_failed",
                detail="simulated health probe failed",
                downloaded=downloaded,
            )
            return False
        self.installed[slot] = Installed(manifest.version, target.manifest_sha256)
        self.fleet.stats.versions[self.device_id] = manifest.version
        await report(AgentState.COMMITTED, downloaded=downloaded)
        return True

    def _probe_fails(self, manifest: BundleManifest) -> bool:
        """A bundle with the fail marker always fails; otherwise at the configured rate."""
        if any(entry.path.split("/")[-1] == FAIL_MARKER for entry in manifest.files):
            return True
        draw = hashlib.sha256(f"{self.cfg.seed}:{self.device_id}:{manifest.version}".encode())
        return int.from_bytes(draw.digest()[:4], "big") / 2**32 < self.cfg.fail_rate

    async def _manifest(
        self, digest: str, allow_downgrade: bool, installed: int | None
    ) -> BundleManifest:
        assert self.trust is not None
        raw = await self._get(endpoints.MANIFEST.format(sha256=digest))
        return self.trust.verify_manifest(
            raw,
            expected_sha256=digest,
            hardware=self.cfg.hardware,
            installed_version=installed,
            allow_downgrade=allow_downgrade,
        ).document

    async def _fetch(self, manifest: BundleManifest) -> int:
        """Stream and verify every file (sampled devices), or HEAD each file (the rest)."""
        total = 0
        for entry in manifest.files:
            path = endpoints.BLOB.format(sha256=entry.sha256)
            if not self.full_download:
                response = await self.fleet.request("HEAD", path, headers=self.headers)
                response.raise_for_status()
                _check_length(
                    entry.path, int(response.headers.get("content-length", 0)), entry.size
                )
                continue
            verifier = FileVerifier(entry.size, entry.sha256, entry.path)
            async with (
                self.fleet.gate,
                self.fleet.http.stream(
                    "GET", path, headers=self.headers, follow_redirects=True
                ) as response,
            ):
                response.raise_for_status()
                async for chunk in response.aiter_bytes():
                    verifier.update(chunk)
            verifier.finish()
            total += entry.size
            self.fleet.stats.bytes_verified += entry.size
        return total

    def _reporter(
        self, state: DesiredState, slot: str, from_version: int | None, to_version: int
    ) -> Callable[..., Any]:
        async def report(
            step: AgentState,
            *,
            error_code: str | None = None,
            detail: str = "",
            downloaded: int = 0,
        ) -> None:
            await self.send(
                StatusReport(
                    report_id=str(uuid.uuid4()),
                    device_id=self.device_id,
                    slot=slot,
                    state=step,
                    at=format_time(utcnow()),
                    from_version=from_version,
                    to_version=to_version,
                    error_code=error_code,
                    detail=detail,
                    sequence=state.sequence,
                    rollout_id=state.slots[slot].rollout_id or state.rollout_id,
                    bytes_downloaded=downloaded,
                    report_seq=next(self.report_seq),
                )
            )

        return report

    async def send(self, report: StatusReport) -> None:
        """MQTT when connected, else HTTP (retried until the server takes it).

        Terminal reports also go over HTTP, as the agent does: a broker's PUBACK
        does not prove the server got them (ingest counts a report id once).
        """
        self.fleet.stats.reports_made += 1
        self.fleet.stats.states[self.device_id] = report.state.value
        payload = json.dumps(report.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        published = self.mqtt is not None and self.mqtt.publish(
            topics.device_status(self.device_id), payload
        )
        if published:
            self.fleet.stats.reports_mqtt += 1
            if report.state not in TERMINAL_STATES:
                return
        await self._post(report, counted=published)

    async def _post(self, report: StatusReport, *, counted: bool) -> None:
        """POST one report until the server answers; ``counted``: already sent over MQTT."""
        delay = 0.5
        while True:
            try:
                response = await self.fleet.request(
                    "POST",
                    endpoints.STATUS,
                    headers=self.headers,
                    json={"reports": [report.to_dict()]},
                )
                if response.status_code < 500:
                    if not counted:
                        self.fleet.stats.reports_http += 1
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)

    async def _get(self, path: str, extra: dict[str, str] | None = None) -> bytes:
        response = await self.fleet.request("GET", path, headers={**self.headers, **(extra or {})})
        response.raise_for_status()
        return response.content


def _check_length(path: str, served: int, declared: int) -> None:
    if served > declared:
        raise LengthExceededError(f"{path}: served {served} bytes, manifest says {declared}")
    if served < declared:
        raise TruncatedError(f"{path}: served {served} bytes, manifest says {declared}")


# --- the fleet ----------------------------------------------------------------------------


class Fleet:
    """Every simulated device on one event loop."""

    def __init__(self, cfg: SimConfig) -> None:
        if cfg.devices < 1 or not 0 <= cfg.fail_rate <= 1:
            raise SimulationError("--devices must be ≥ 1 and --fail-rate within [0, 1]")
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.stats = Stats()
        self.http = httpx.AsyncClient(
            base_url=cfg.server.rstrip("/"),
            timeout=HTTP_TIMEOUT_S,
            limits=httpx.Limits(
                max_connections=cfg.http_connections, max_keepalive_connections=cfg.http_connections
            ),
        )
        # Queue requests here rather than in httpx's pool, whose bookkeeping grows with
        # the number of waiting requests (thousands of devices syncing at once).
        self.gate = asyncio.Semaphore(cfg.http_connections)
        self.devices = [SimDevice(self, index) for index in range(cfg.devices)]

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with self.gate:
            return await self.http.request(method, path, **kwargs)

    async def enroll_all(self) -> None:
        gate = asyncio.Semaphore(self.cfg.enroll_concurrency)

        async def one(device: SimDevice) -> None:
            async with gate:
                await device.enroll()

        await asyncio.gather(*(one(device) for device in self.devices))

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.enroll_all()
            await asyncio.gather(*(device.run(stop) for device in self.devices))
        finally:
            await self.http.aclose()


async def simulate(
    cfg: SimConfig,
    stop: asyncio.Event,
    *,
    run_for: float | None = None,
    on_tick: Callable[[Stats], None] | None = None,
) -> Stats:
    """Run the fleet until ``stop`` is set (or ``run_for`` seconds passed)."""
    fleet = Fleet(cfg)
    runner = asyncio.ensure_future(fleet.run(stop))
    started = time.monotonic()
    while not runner.done():
        await asyncio.wait({runner}, timeout=1.0)
        if on_tick is not None:
            on_tick(fleet.stats)
        if run_for is not None and time.monotonic() - started >= run_for:
            stop.set()
    runner.result()
    return fleet.stats


def _parse_tags(items: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise typer.BadParameter(f"--tags {item!r}: expected KEY=VALUE, e.g. channel=canary")
        tags[key] = value
    return tags


def progress_line(stats: Stats, devices: int) -> str:
    """``enrolled 480/500, states: committed 400, downloading 60, failed 20`` — for people."""
    counts = Counter(stats.states.values())
    states = ", ".join(f"{state} {n}" for state, n in counts.most_common())
    return f"enrolled {stats.enrolled}/{devices}" + (f", states: {states}" if states else "")


def default_server() -> str:
    """The server of `ferry configure` (or FERRY_SERVER), as the other commands use."""
    from ferry.client import load_config

    server = load_config().server
    if not server:
        raise typer.BadParameter(
            "no server: pass --server URL, or run `ferry configure "
            "--server URL` (or set FERRY_SERVER)",
            param_hint="--server",
        )
    return server


@app.command(
    "simulate",
    epilog="Example: ferry simulate --enrollment-token fre_… --devices "
    "500 --fail-rate 0.1 --tags channel=canary   (server: from `ferry configure`)",
)
def simulate_command(
    enrollment_token: Annotated[str, typer.Option(help="Enrolment token (fre_…)")],
    server: Annotated[
        str | None,
        typer.Option(help="Server base URL (default: the one of `ferry configure` / FERRY_SERVER)"),
    ] = None,
    devices: Annotated[int, typer.Option(help="How many devices to simulate")] = 10,
    fail_rate: Annotated[float, typer.Option(help="Share of updates whose probe fails")] = 0.0,
    hardware: Annotated[str, typer.Option(help="Hardware type of every device")] = "x86_64",
    tags: Annotated[list[str] | None, typer.Option("--tags", help="KEY=VALUE, repeatable")] = None,
    prefix: Annotated[str, typer.Option(help="Device ids are PREFIX-00000…")] = "sim",
    verify_sample: Annotated[
        float, typer.Option(help="Share of devices that download and hash every file")
    ] = 0.05,
    poll_interval: Annotated[
        float | None, typer.Option(help="Poll period in seconds (default: from enrolment)")
    ] = None,
    step_delay: Annotated[float, typer.Option(help="Seconds spent in each state")] = 0.05,
    no_mqtt: Annotated[bool, typer.Option("--no-mqtt", help="HTTP polling only")] = False,
    source_address: Annotated[
        list[str] | None,
        typer.Option(
            "--source-address",
            help="Local address for MQTT connections, repeatable (devices take them in turn; "
            "one address reaches ~28,000 connections to one broker port)",
        ),
    ] = None,
    run_for: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the failure draw")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Simulate a fleet that enrols, follows rollouts and reports, until Ctrl-C or --run-for."""
    cfg = SimConfig(
        server=server or default_server(),
        enrollment_token=enrollment_token,
        devices=devices,
        fail_rate=fail_rate,
        hardware=hardware,
        tags=_parse_tags(tags or []),
        prefix=prefix,
        verify_sample=verify_sample,
        poll_interval_s=poll_interval,
        step_delay_s=step_delay,
        mqtt=not no_mqtt,
        seed=seed,
        source_addresses=tuple(source_address or ()),
    )

    def progress(stats: Stats) -> None:
        if not json_out:
            typer.echo(progress_line(stats, devices), err=True)

    async def main() -> Stats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await simulate(cfg, stop, run_for=run_for, on_tick=progress)

    try:
        stats = asyncio.run(main())
    except SimulationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    summary = stats.summary()
    typer.echo(
        json.dumps(summary, sort_keys=True)
        if json_out
        else "\n".join(f"{k}: {v}" for k, v in summary.items())
    )


if __name__ == "__main__":
    app()
