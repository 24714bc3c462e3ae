"""The agent: learn the desired state (MQTT notice or polling), verify it, converge each slot.

``Agent.sync`` is the whole update workflow, python-tuf style — one reference
time, then keyring → desired state → per slot: manifest → state machine. Nothing
is persisted before it verified. ``Agent.run_forever`` wraps it in jittered
exponential backoff (tenacity) and wakes up early on an MQTT notice.
"""

from __future__ import annotations

import fcntl
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from ferry.agent.config import AgentConfig
from ferry.agent.download import Downloader, DownloadOptions
from ferry.agent.errors import (
    AgentError,
    NothingToRollBackError,
    UnauthorizedError,
    error_code,
    is_transient,
)
from ferry.agent.identity import DeviceFiles, Identity, TrustState
from ferry.agent.installer import Slot, version_name
from ferry.agent.machine import RolledBack, Services, SlotMachine, slot_names, slot_record_path
from ferry.agent.mqtt import MqttLink
from ferry.agent.record import Update, load_record
from ferry.agent.reports import ReportQueue, ReportSender
from ferry.agent.storage import remove_temps
from ferry.agent.transport import DeviceApi
from ferry.protocol.documents import (
    AgentState,
    DeltaDescriptor,
    DesiredState,
    SlotTarget,
    StatusReport,
)
from ferry.protocol.errors import ProtocolError
from ferry.protocol.timefmt import format_time, utcnow
from ferry.protocol.verify import (
    SequenceFloor,
)

log = logging.getLogger("ferry.agent")

DEVICE_SLOT = "device"  # reports about the device as a whole (keyring, desired state)


class Agent:
    """One enrolled device: its files, its server, its slots."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.files = DeviceFiles(config.state_dir)
        self.identity: Identity = self.files.load_identity()
        self.trust: TrustState = self.files.load_trust()
        self.api = DeviceApi(
            config.server.url or self.identity.server_url,
            self.identity.credential,
            timeout_s=config.server.timeout_s,
            max_document_bytes=config.server.max_document_bytes,
            verify=config.server.ca_file or True,
        )
        self.reports = ReportQueue(config.state_dir / "reports", config.report.max_queued)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.mqtt = self._mqtt_link()
        self.sender = ReportSender(
            self.reports,
            self._publish,
            self.api.post_status,
            config.report.batch,
            config.report.retry_s,
        )
        install = config.install
        self.downloader = Downloader(
            self.api,
            DownloadOptions(
                install.chunk_bytes, install.reserve_bytes, install.use_deltas, config.download
            ),
            self.stopping.is_set,
            descriptors=self._verified_descriptor,
        )
        self._last_refusal: tuple[str, str] | None = None
        config.models_dir.mkdir(parents=True, exist_ok=True)

    # --- wiring ---------------------------------------------------------------------

    def _verified_descriptor(
        self, raw: bytes, from_sha256: str, to_sha256: str, to_size: int
    ) -> DeltaDescriptor:
        """A delta's descriptor checked against the keyring the agent trusts now."""
        return self.trust.chain.verify_delta_descriptor(
            raw, from_sha256=from_sha256, to_sha256=to_sha256, to_size=to_size
        ).document

    def _mqtt_link(self) -> MqttLink | None:
        settings = self.identity.mqtt or {}
        url = self.config.mqtt.url or settings.get("url")
        if not self.config.mqtt.enabled or not url:
            return None
        return MqttLink(
            url,
            device_id=self.identity.device_id,
            groups=self.identity.groups,
            username=settings.get("username"),
            password=settings.get("password"),
            keepalive_s=self.config.mqtt.keepalive_s,
            publish_timeout_s=self.config.mqtt.publish_timeout_s,
            reconnect_max_s=self.config.poll.backoff_max_s,
            on_notice=self.wake.set,
        )

    def _publish(self, report: dict[str, Any]) -> bool:
        return self.mqtt is not None and self.mqtt.publish(report)

    def services(self) -> Services:
        return Services(
            self.config,
            self.identity.device_id,
            self.downloader,
            self.reports,
            self.sender.wake.set,
        )

    def machine(self, slot_name: str) -> SlotMachine:
        slot = Slot(self.config.models_dir, slot_name)
        slot.ensure()
        return SlotMachine(self.services(), slot)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One update at a time, across the daemon and the ``rollback`` command."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.config.state_dir / "agent.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- the workflow ---------------------------------------------------------------

    def recover(self) -> None:
        """At start: resume or undo every update a crash interrupted."""
        with self.locked():
            self.reports.sweep()
            remove_temps(self.config.state_dir / "slots")
            for name in slot_names(self.config):
                try:
                    machine = self.machine(name)
                    machine.recover()
                except AgentError as exc:
                    log.warning(
                        "recover_deferred", extra={"fields": {"slot": name, "error": exc.code}}
                    )
                    continue
                if machine.state is AgentState.IDLE:  # no install between stage and manifest
                    self._sweep(machine.slot)

    def _sweep(self, slot: Slot) -> None:
        """Remove what a kill left in a slot: temp links, half-removed version folders."""
        for name in slot.sweep():
            log.info("leftover_removed", extra={"fields": {"slot": slot.name, "path": name}})

    def sync(self) -> None:
        """Fetch, verify and apply the desired state once. Transient errors propagate."""
        with self.locked():
            now = utcnow()
            try:
                self._refresh_keyring(now)
                epoch = self.mqtt.notice_epoch if self.mqtt is not None else None
                desired = self._accept_desired_state(self.api.desired_state(epoch), now)
            except (ProtocolError, AgentError) as exc:
                if not _is_refusal(exc):
                    raise
                self._refuse(exc)
                return
            for slot_name, target in sorted(desired.slots.items()):
                self._converge(slot_name, target, desired)

    def _refresh_keyring(self, now: datetime) -> None:
        """Walk ``/keyring/{v}`` one version at a time so root rotations chain up."""
        if self.trust.chain.refresh_keyring(self.api.keyring(), self.api.keyring, now):
            self.files.save_trust(self.trust)
            log.info("keyring_updated", extra={"fields": {"version": self.trust.keyring.version}})

    def _accept_desired_state(self, raw: bytes, now: datetime) -> DesiredState:
        """Verify the directive above the floor that applies under the keyring, then raise it.

        The floor is void once a root-signed keyring rotated out every director key
        that signed it (fast-forward recovery, ``SequenceFloor.under``).
        """
        if self.trust.floor.under(self.trust.keyring) != self.trust.floor:
            log.warning(
                "sequence_floor_reset",
                extra={"fields": {"old": self.trust.floor.sequence,
                                  "keyring": self.trust.keyring.version}},
            )  # fmt: skip
        verified = self.trust.chain.verify_desired_state(
            raw, device_id=self.identity.device_id, floor=self.trust.floor, now=now
        )
        accepted = SequenceFloor.accepted(verified)
        if accepted != self.trust.floor:
            self.trust.floor = accepted
            self.files.save_trust(self.trust)
            log.info("desired_state", extra={"fields": {"sequence": accepted.sequence}})
        return verified.document

    def _converge(self, slot_name: str, target: SlotTarget, desired: DesiredState) -> None:
        """Bring one slot to ``target``; a refusal is reported and the slot keeps its model."""
        machine = self.machine(slot_name)
        if machine.state is not AgentState.IDLE:
            if machine.update.digest == target.manifest_sha256:
                machine.retry()
                return
            machine.abandon()
        current = machine.slot.current()
        if current is not None and current.digest == target.manifest_sha256:
            return
        last = machine.record.last
        if (
            last is not None
            and last.digest == target.manifest_sha256
            and last.sequence == desired.sequence
            and last.state in (AgentState.FAILED, AgentState.ROLLED_BACK)
        ):
            return  # refused or rolled back already; wait for a new directive
        update = Update(
            digest=target.manifest_sha256,
            sequence=desired.sequence,
            rollout_id=target.rollout_id or desired.rollout_id,
            model=target.model,
            to_version=target.version,
            from_version=current.manifest.version if current else None,
            from_name=current.name if current else None,
        )
        try:
            raw = self.api.manifest(target.manifest_sha256)
            same_model = current is not None and current.manifest.full_name == target.model
            verified = self.trust.chain.verify_manifest(
                raw,
                expected_sha256=target.manifest_sha256,
                hardware=self.config.hardware,
                installed_version=current.manifest.version if current and same_model else None,
                allow_downgrade=target.allow_downgrade,
                installed_digests=machine.installed_digests(),
            )
        except (ProtocolError, AgentError) as exc:
            if is_transient(exc):
                raise
            machine.refuse(update, exc)
            return
        update.manifest = verified.envelope_dict
        update.to_version = verified.document.version
        update.to_name = version_name(verified.document, verified.digest)
        machine.start(update)

    def _refuse(self, exc: ProtocolError | AgentError) -> None:
        """Report a refused keyring or desired state once per distinct refusal."""
        key = (exc.code, str(exc))
        log.warning("refused", extra={"fields": {"error_code": exc.code, "detail": str(exc)}})
        if key == self._last_refusal:
            return
        self._last_refusal = key
        self.reports.put(
            StatusReport(
                report_id=str(uuid.uuid4()),
                device_id=self.identity.device_id,
                slot=DEVICE_SLOT,
                state=AgentState.FAILED,
                at=format_time(utcnow()),
                error_code=exc.code,
                detail=str(exc)[:4000],
                sequence=self.trust.last_sequence or None,
            )
        )
        self.sender.wake.set()

    # --- manual rollback ------------------------------------------------------------

    def rollback(self, slot_name: str) -> str:
        """Switch a slot back to its previous version by hand; the daemon will not undo it."""
        with self.locked():
            machine = self.machine(slot_name)
            current, previous = machine.slot.current(), machine.slot.previous()
            if previous is None or current is None or previous.name == current.name:
                raise NothingToRollBackError(
                    f"slot {slot_name} has no previous version to go back to"
                )
            # Through the machine, so a crash half-way is finished by recovery. ``from_name``
            # is what RolledBack switches to; no ``to_name``: the version stays on disk.
            machine.record.update = Update(
                digest=current.digest,
                sequence=self.trust.last_sequence,
                from_version=current.manifest.version,
                to_version=previous.manifest.version,
                from_name=previous.name,
                started_ms=int(time.time() * 1000),  # tells its report id from earlier ones
            )
            machine.record.error_code, machine.record.detail = None, "rolled back by hand"
            machine.run(RolledBack())
            return previous.name

    # --- the daemon -----------------------------------------------------------------

    def poll_interval(self) -> float:
        base = self.config.poll.interval_s or self.identity.poll_interval_s
        spread = base * self.config.poll.jitter
        return max(0.05, base + random.uniform(-spread, spread))

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once for an MQTT notice or a stop request."""
        self.wake.wait(seconds)
        self.wake.clear()

    def run_forever(self) -> None:
        """Recover, then converge for ever: poll, or react to notices; back off on failures."""
        self.sender.start()
        if self.mqtt is not None:
            self.mqtt.start()
        self.recover()
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential_jitter(
                initial=self.config.poll.backoff_min_s,
                max=self.config.poll.backoff_max_s,
                jitter=self.config.poll.backoff_min_s,
            ),
            sleep=self._sleep,
            stop=lambda _: self.stopping.is_set(),
            before_sleep=_log_retry,
            reraise=True,
        )
        while not self.stopping.is_set():
            try:
                retrying(self.sync)
            except Exception as exc:  # noqa: BLE001 — the daemon logs and keeps running its model
                log.error(
                    "sync_failed", extra={"fields": {"error": error_code(exc), "detail": str(exc)}}
                )
            if not self.stopping.is_set():
                self._sleep(self.poll_interval())
        self.close()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def close(self) -> None:
        self.sender.stop()
        if self.mqtt is not None:
            self.mqtt.stop()
        self.api.close()

    def status(self) -> dict[str, Any]:
        """What is installed, staged and pending, per slot (for ``ferry-agent status``)."""
        return agent_status(self.config, self.identity, self.trust, self.reports)


def _is_refusal(exc: ProtocolError | AgentError) -> bool:
    """Refused data is reported; trouble reaching the server (or a revoked credential,
    which no report could get past) is not a refusal, and propagates."""
    return not is_transient(exc) and not isinstance(exc, UnauthorizedError)


def _log_retry(retry: RetryCallState) -> None:
    failure = retry.outcome.exception() if retry.outcome is not None else None
    code = error_code(failure) if failure is not None else "unknown"
    log.warning("sync_retry", extra={"fields": {"attempt": retry.attempt_number, "error": code}})


def agent_status(
    config: AgentConfig, identity: Identity, trust: TrustState, reports: ReportQueue
) -> dict[str, Any]:
    """A JSON-able summary; reads files only, so it works while the daemon runs."""
    slots: dict[str, Any] = {}
    names = set(slot_names(config))
    if config.models_dir.is_dir():
        names |= {p.name for p in config.models_dir.iterdir() if p.is_dir()}
    for name in sorted(names):
        slot = Slot(config.models_dir, name)
        current, previous = slot.current(), slot.previous()
        record = load_record(slot_record_path(config, name), name, slot.all_installed)
        staged = (
            sorted(p.name for p in slot.staging_root.iterdir())
            if slot.staging_root.is_dir()
            else []
        )
        slots[name] = {
            "current": _describe(current),
            "previous": _describe(previous),
            "state": record.state.value,
            "update": record.update.public() if record.update else None,
            "last": record.to_json()["last"],
            "staging": staged,
        }
    return {
        "device_id": identity.device_id,
        "server": identity.server_url,
        "keyring_version": trust.keyring.version,
        "desired_state_sequence": trust.last_sequence,
        "pending_reports": reports.count(),
        "slots": slots,
    }


def _describe(installed: Any) -> dict[str, Any] | None:
    if installed is None:
        return None
    return {
        "model": installed.manifest.full_name,
        "version": installed.manifest.version,
        "manifest_sha256": installed.digest,
        "path": str(installed.path),
    }
