"""A fleet test harness: the real app on tmp SQLite, a frozen clock, a recording notifier,
and helpers to publish versions, enrol devices, play agents and run gate ticks."""

from __future__ import annotations

import hashlib
import secrets
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from ferry.protocol.documents import Keyring
from ferry.protocol.signing import parse_envelope
from ferry.protocol.timefmt import format_time, parse_time
from ferry.server.app import create_app
from ferry.server.core.settings import Settings
from ferry.server.fleet.runtime import FleetRuntime, FleetSettings
from ferry.server.rollouts.engine import tick

API = "/api/v1"
START = parse_time("2026-11-25T03:00:00Z")


@dataclass
class FrozenClock:
    """Time that moves only when a test says so."""

    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class RecordingNotifier:
    """Keeps every announcement, so tests can count publishes per wave."""

    calls: list[tuple[list[str], str]] = field(default_factory=list)
    epochs: list[int | None] = field(default_factory=list)

    def announce(self, groups: list[str], rollout_id: str, epoch: int | None = None) -> None:
        self.calls.append((list(groups), rollout_id))
        self.epochs.append(epoch)


@dataclass
class RecordingBrokerSync:
    count: int = 0

    def credentials_changed(self) -> None:
        self.count += 1


@dataclass
class Agent:
    """A device as the server sees it: id, credential, groups."""

    device_id: str
    credential: str
    groups: list[str]
    keyring: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Fleet:
    app: FastAPI
    client: TestClient
    admin: dict[str, str]
    clock: FrozenClock
    notifier: RecordingNotifier
    broker: RecordingBrokerSync
    _versions_made: int = 0

    @property
    def runtime(self) -> FleetRuntime:
        runtime: FleetRuntime = self.app.state.fleet
        return runtime

    def tick(self) -> None:
        tick(self.app.state.ctx.engine, self.runtime)

    def flush_last_seen(self) -> None:
        """Write the noted sightings, as the server's flush loop does every 2 s."""
        self.runtime.last_seen.flush(self.app.state.ctx.engine)

    # --- registry -------------------------------------------------------------------

    def token(self, role: str, namespaces: list[str] | None = None) -> dict[str, str]:
        body = {
            "name": f"{role}-{secrets.token_hex(3)}",
            "role": role,
            "namespaces": namespaces or ["*"],
        }
        r = self.client.post(f"{API}/tokens", json=body, headers=self.admin)
        assert r.status_code == 201, r.text
        return bearer(r.json()["token"])

    def namespace(self, name: str) -> None:
        r = self.client.post(f"{API}/namespaces", json={"name": name}, headers=self.admin)
        assert r.status_code == 201, r.text

    def model(self, ns: str, name: str) -> None:
        r = self.client.post(
            f"{API}/models", json={"namespace": ns, "name": name}, headers=self.admin
        )
        assert r.status_code in (200, 201), r.text

    def version(
        self,
        ns: str = "vision",
        name: str = "det",
        *,
        stage: str | None = "Production",
        hardware: list[str] | None = None,
        inputs: list[Any] | None = None,
    ) -> int:
        """Register a new version (fresh bytes) and move it to ``stage``.

        The bytes are derived from a counter, not random: a manifest's digest seeds its
        rollouts' wave membership, so a test's waves are the same on every run.
        """
        self._versions_made += 1
        data = hashlib.sha256(f"{ns}/{name}/{self._versions_made}".encode()).digest()
        sha = hashlib.sha256(data).hexdigest()
        assert (
            self.client.put(f"{API}/blobs/{sha}", content=data, headers=self.admin).status_code
            == 201
        )
        body = {
            "files": [{"path": "model.onnx", "sha256": sha, "size": len(data)}],
            "format": "onnx",
            "flavor": "onnxruntime",
            "signature": {
                "inputs": inputs or [{"name": "x", "dtype": "float32", "shape": [1, 3]}],
                "outputs": [],
            },
            "hardware": hardware if hardware is not None else ["x86_64", "jetson-orin"],
            "metadata": {"created_by": "ci", "run_id": "r", "git_commit": "c"},
        }
        r = self.client.post(f"{API}/models/{ns}/{name}/versions", json=body, headers=self.admin)
        assert r.status_code == 201, r.text
        number: int = r.json()["version"]
        for step in {"Staging": ["Staging"], "Production": ["Staging", "Production"]}.get(
            stage or "", []
        ):
            r = self.client.post(
                f"{API}/models/{ns}/{name}/versions/{number}/stage",
                json={"stage": step},
                headers=self.admin,
            )
            assert r.status_code == 200, r.text
        return number

    def manifest_sha(self, ns: str, name: str, version: int) -> str:
        r = self.client.get(f"{API}/models/{ns}/{name}/versions/{version}", headers=self.admin)
        return str(r.json()["manifest_sha256"])

    # --- fleet ----------------------------------------------------------------------

    def enrollment_token(self, ns: str = "vision", **body: Any) -> str:
        r = self.client.post(
            f"{API}/enrollment-tokens",
            json={"namespace": ns, "name": "batch", "max_uses": None, **body},
            headers=self.admin,
        )
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def enroll(
        self,
        token: str,
        device_id: str | None = None,
        hardware: str = "x86_64",
        tags: dict[str, str] | None = None,
        expect: int = 201,
        credential: str | None = None,
    ) -> Any:
        body = {
            "enrollment_token": token,
            "device_id": device_id,
            "hardware": hardware,
            "agent_version": "0.1.0",
            "tags": tags or {},
        }
        if credential is not None:
            body["credential"] = credential
        r = self.client.post(f"{API}/device/enroll", json=body)
        assert r.status_code == expect, r.text
        if expect != 201:
            return r
        body = r.json()
        return Agent(body["device_id"], body["credential"], body["groups"], body["keyring"])

    def devices(
        self, n: int, token: str | None = None, prefix: str = "dev", **kwargs: Any
    ) -> list[Agent]:
        token = token or self.enrollment_token()
        return [self.enroll(token, f"{prefix}-{i:04d}", **kwargs) for i in range(n)]

    def desired(self, agent: Agent) -> dict[str, Any]:
        r = self.client.get(f"{API}/device/desired-state", headers=agent.headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def keyring(self, agent: Agent) -> Keyring:
        return Keyring.from_dict(parse_envelope(agent.keyring).signed)

    def report(
        self,
        agent: Agent,
        state: str,
        *,
        to_version: int | None,
        from_version: int | None = None,
        rollout_id: str | None = None,
        slot: str = "main",
        report_id: str | None = None,
        error_code: str | None = None,
    ) -> dict[str, Any]:
        doc = report_doc(
            agent.device_id,
            state,
            to_version=to_version,
            from_version=from_version,
            rollout_id=rollout_id,
            slot=slot,
            report_id=report_id,
            at=format_time(self.clock.now),
            error_code=error_code,
        )
        r = self.client.post(f"{API}/device/status", json={"reports": [doc]}, headers=agent.headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def rollout(self, expect: int = 201, **body: Any) -> Any:
        payload = {
            "namespace": "vision",
            "model": "det",
            "version": "1",
            "waves": [50, 100],
            **body,
        }
        r = self.client.post(f"{API}/rollouts", json=payload, headers=self.admin)
        assert r.status_code == expect, r.text
        return r.json()

    def act(self, rollout_id: str, action: str, expect: int = 200) -> Any:
        r = self.client.post(f"{API}/rollouts/{rollout_id}/{action}", headers=self.admin)
        assert r.status_code == expect, r.text
        return r.json()

    def status(self, rollout_id: str) -> dict[str, Any]:
        r = self.client.get(f"{API}/rollouts/{rollout_id}/status", headers=self.admin)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def show(self, rollout_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"{API}/rollouts/{rollout_id}", headers=self.admin).json())


def report_doc(
    device_id: str,
    state: str,
    *,
    to_version: int | None,
    at: str,
    from_version: int | None = None,
    rollout_id: str | None = None,
    slot: str = "main",
    report_id: str | None = None,
    error_code: str | None = None,
) -> dict[str, Any]:
    return {
        "_type": "status-report",
        "spec_version": 1,
        "report_id": report_id or str(uuid.uuid4()),
        "device_id": device_id,
        "slot": slot,
        "state": state,
        "at": at,
        "from_version": from_version,
        "to_version": to_version,
        "error_code": error_code,
        "detail": "",
        "sequence": None,
        "rollout_id": rollout_id,
        "bytes_downloaded": 0,
        "timings": {},
    }


def build_fleet(data_dir: Path, database_url: str = "") -> tuple[Fleet, TestClient]:
    """An app with the rollout engine and the last-seen writer idle (tests tick and flush by
    hand) and a frozen clock."""
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        print_admin_token=False,
        start_webhook_worker=False,
    )
    app = create_app(settings)
    clock, notifier, broker = FrozenClock(), RecordingNotifier(), RecordingBrokerSync()
    # The epoch poller runs hourly: tests poll by hand, so a background poll between two
    # steps of a test never empties the cache behind its back (caching stays on).
    app.state.fleet = FleetRuntime(
        settings=FleetSettings(
            start_rollout_engine=False, last_seen_flush_s=3600, checkin_cache_poll_s=3600
        ),
        clock=clock,
        notifier=notifier,
        broker_sync=broker,
    )
    client = TestClient(app)
    admin = bearer(settings.admin_token_path.read_text().strip())
    return Fleet(app, client, admin, clock, notifier, broker), client


def second_replica(fleet: Fleet, root: Path) -> tuple[Fleet, TestClient]:
    """Another replica on ``fleet``'s database, with a copy of its data directory (the same
    keys and admin token), under ``root``/replica-b."""
    data_dir = root / "replica-b"
    shutil.copytree(fleet.app.state.ctx.settings.data_dir, data_dir, dirs_exist_ok=True)
    return build_fleet(data_dir, database_url=fleet.app.state.ctx.settings.database_url)
