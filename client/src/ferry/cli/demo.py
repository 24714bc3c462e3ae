"""`make demo`: a server, real agents and a simulated fleet taking real rollouts, end to end.

    python -m ferry.cli.demo [--devices 200] [--keep-running] [--data-dir .ferry-demo]

1. starts ``ferry server`` (SQLite, local blobs, embedded MQTT broker) on free ports;
2. registers ``demo/detector`` v1 (good), v2 (bad: its bundle holds ``FAIL_PROBE``,
   which every health probe refuses) and v3 (good), all promoted to Production;
3. enrols three real ``ferry-agent`` processes (own data dirs, a probe command)
   and a simulated fleet (``ferry simulate``);
4. rolls v1 out as the baseline, then v2 — it fails in the canary wave, the
   failure gate halts it and it rolls back on its own — then v3 to 100 %,
   printing progress as it goes.

The building blocks (`ServerProcess`, `AgentProcess`, `SimulatorProcess`,
`Operator`) are reused by the end-to-end tests and the benchmarks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from ferry.client import FerryClient
from ferry.protocol.waves import rollout_seed, wave_index

FAIL_MARKER = "FAIL_PROBE"
NAMESPACE, MODEL = "demo", "detector"
START_TIMEOUT_S = 60.0
ROLLOUT_TIMEOUT_S = 240.0
FINAL_STATES = frozenset({"completed", "rolled_back", "cancelled"})
BAD_WAVES = [5, 25, 100]
PROBE_COMMAND = ["sh", "-c", f'test ! -e "$FERRY_MODEL_DIR/{FAIL_MARKER}"']

console = Console(highlight=False)


class DemoError(Exception):
    """The demo (or an end-to-end scenario built from its parts) did not go as planned."""

    code = "demo_failed"


def free_port() -> int:
    """A TCP port that was free a moment ago (the kernel's choice: never 1883)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- processes -------------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """``ferry server`` in its own process; kill it and start it again on the same ports."""

    data_dir: Path
    http_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_name: str = "server.log"  # replicas sharing one data directory log apart

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / self.log_name

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def start(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "FERRY_PRINT_ADMIN_TOKEN": "false",
            "FERRY_MQTT_ENABLED": "true",
            "FERRY_MQTT_PORT": str(self.mqtt_port),
            "FERRY_ROLLOUT_TICK_S": "0.5",
            "FERRY_POLL_INTERVAL_S": "5",
            **self.env,
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ferry.cli.server_cmds",
                "server",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.http_port),
            ],
            stdout=log,
            stderr=log,
            env=env,
        )
        log.close()
        wait_until(self._healthy, START_TIMEOUT_S, f"the server at {self.url}")
        return self

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise DemoError(
                f"the server exited with {self.process.returncode}: "
                f"{self.log_path.read_text()[-3000:]}"
            )
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        _stop(self.process)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye (crash drills)."""
        _stop(self.process, signal.SIGKILL)
        self.process = None


@dataclass
class AgentProcess:
    """A real ``ferry-agent`` with its own state dir and the demo's health probe."""

    workdir: Path
    device_id: str
    poll_interval_s: float = 2.0
    tags: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "agent.toml"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tags = "".join(f'{k} = "{v}"\n' for k, v in sorted(self.tags.items()))
        self.config_path.write_text(
            f'state_dir = "state"\nhardware = "x86_64"\ndevice_id = "{self.device_id}"\n'
            f'log_level = "info"\n\n[tags]\n{tags}\n'
            f"[poll]\ninterval_s = {self.poll_interval_s}\nbackoff_min_s = 0.2\n"
            f"backoff_max_s = 2.0\n\n"
            f"[probe]\ncommand = {json.dumps(PROBE_COMMAND)}\ntimeout_s = 20\n\n"
            f"[report]\nretry_s = 0.5\n"
        )
        return self.config_path

    def _cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ferry.agent.cli", "--config", str(self.config_path), *args]

    def enroll(self, server_url: str, token: str) -> None:
        self.write_config()
        done = subprocess.run(
            self._cmd("enroll", "--server", server_url, "--token", token),
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise DemoError(
                f"ferry-agent enroll ({self.device_id}) failed: {done.stderr.strip()[-1500:]}"
            )

    def start(self) -> AgentProcess:
        log = (self.workdir / "agent.log").open("ab")
        self.process = subprocess.Popen(self._cmd("run"), stdout=log, stderr=log)
        log.close()
        return self

    def stop(self) -> None:
        _stop(self.process)
        self.process = None

    def kill(self) -> None:
        _stop(self.process, signal.SIGKILL)
        self.process = None

    def status(self) -> dict[str, Any]:
        done = subprocess.run(
            self._cmd("status", "--json"), check=False, capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise DemoError(f"ferry-agent status failed: {done.stderr.strip()[-500:]}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result


@dataclass
class SimulatorProcess:
    """``ferry simulate`` in its own process; its JSON summary is read when it stops."""

    workdir: Path
    server_url: str
    token: str
    devices: int
    fail_rate: float = 0.0
    prefix: str = "sim"
    extra: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> SimulatorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        out = (self.workdir / f"{self.prefix}.json").open("wb")
        err = (self.workdir / f"{self.prefix}.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ferry.cli.simulate",
                "--server",
                self.server_url,
                "--enrollment-token",
                self.token,
                "--devices",
                str(self.devices),
                "--fail-rate",
                str(self.fail_rate),
                "--prefix",
                self.prefix,
                "--poll-interval",
                "5",
                "--json",
                *self.extra,
            ],
            stdout=out,
            stderr=err,
        )
        out.close()
        err.close()
        return self

    def stop(self) -> dict[str, Any]:
        _stop(self.process, signal.SIGINT)
        self.process = None
        raw = (self.workdir / f"{self.prefix}.json").read_text().strip()
        return json.loads(raw.splitlines()[-1]) if raw else {}


# --- the operator's side -------------------------------------------------------------------


class Operator:
    """What an operator and a training pipeline do, through the SDK and the REST API."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.sdk = FerryClient(url, token)
        self.http = httpx.Client(
            base_url=f"{url}/api/v1", timeout=30, headers={"Authorization": f"Bearer {token}"}
        )

    def close(self) -> None:
        self.sdk.close()
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise DemoError(f"{method} {path} → {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def publish_model(self, workdir: Path, versions: list[bool], size: int) -> list[int]:
        """Register one version per entry (True = a bad bundle) and promote each to Production."""
        self.sdk.create_namespace(NAMESPACE)
        self.sdk.create_model(NAMESPACE, MODEL, description="demo model")
        numbers = []
        for index, bad in enumerate(versions, start=1):
            files = write_bundle(workdir / f"v{index}", index, bad=bad, size=size)
            version = self.sdk.push_version(
                NAMESPACE,
                MODEL,
                files,
                format="onnx",
                flavor="onnxruntime",
                signature={
                    "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
                    "outputs": [],
                },
                created_by="demo",
                run_id=f"run-{index}",
                git_commit="0" * 40,
                hardware=["x86_64"],
                metrics={"accuracy": 0.9 + index / 100},
            )
            for stage in ("Staging", "Production"):
                self.sdk.set_stage(NAMESPACE, MODEL, version.version, stage)
            numbers.append(version.version)
        return numbers

    def enrollment_token(self, uses: int | None) -> str:
        body = {"namespace": NAMESPACE, "name": f"demo-{time.time_ns()}", "max_uses": uses}
        token: str = self._call("POST", "/enrollment-tokens", json=body)["token"]
        return token

    def create_rollout(self, version: int, waves: list[int], **gates: Any) -> dict[str, Any]:
        body = {
            "namespace": NAMESPACE,
            "model": MODEL,
            "version": str(version),
            "waves": waves,
            **gates,
        }
        result: dict[str, Any] = self._call("POST", "/rollouts", json=body)
        return result

    def rollout_status(self, rollout_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/rollouts/{rollout_id}/status")
        return result

    def fleet_status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/fleet/status")
        return result

    def wait_rollout(
        self,
        rollout_id: str,
        done: Callable[[dict[str, Any]], bool],
        timeout: float = ROLLOUT_TIMEOUT_S,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the rollout's status until ``done(status)``; returns that status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.rollout_status(rollout_id)
            if on_status is not None:
                on_status(status)
            if done(status):
                return status
            if time.monotonic() > deadline:
                raise DemoError(
                    f"rollout {rollout_id} still {status['rollout']['state']} "
                    f"after {timeout:g}s: {status['totals']}"
                )
            time.sleep(0.5)


def canary_name(base: str, wave_seed: str, waves: list[int]) -> str:
    """A device id that the (deterministic) wave hash puts in the first wave of a rollout
    with ``wave_seed`` (`ferry.protocol.waves.rollout_seed` of what it asks for).

    So one real agent takes the bad release in its canary wave and shows its
    probe failing and its local rollback.
    """
    for suffix in range(100_000):
        name = f"{base}-{suffix}"
        if wave_index(wave_seed, name, waves) == 0:
            return name
    return base


def write_bundle(directory: Path, version: int, *, bad: bool, size: int) -> list[Path]:
    """A small bundle: weights (deterministic bytes), a card, and the fail marker when bad."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / "model.onnx"
    seed = version.to_bytes(4, "big")
    block = (seed * 16384)[:65536]
    with weights.open("wb") as handle:
        for offset in range(0, size, len(block)):
            handle.write(block[: min(len(block), size - offset)])
    card = directory / "card.json"
    card.write_text(json.dumps({"version": version, "bad": bad}))
    files = [weights, card]
    if bad:
        marker = directory / FAIL_MARKER
        marker.write_text("this bundle fails its health probe on purpose\n")
        files.append(marker)
    return files


# --- the demo itself -----------------------------------------------------------------------


COLUMNS = ("wave", "%", "devices", "pending", "updating", "committed", "failed", "rolled back")


def _rows(status: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for wave in status["waves"]:
        counts = wave["counts"]
        rows.append(
            tuple(
                str(n)
                for n in (
                    wave["wave"],
                    wave["percent"],
                    wave["total"],
                    counts["pending"],
                    counts["downloading"] + counts["installing"],
                    counts["committed"],
                    counts["failed"] + counts["timed_out"],
                    counts["rolled_back"],
                )
            )
        )
    return rows


def _reporter(title: str) -> Callable[[dict[str, Any]], None]:
    """Print the wave table whenever what it shows changes."""
    shown: list[object] = []

    def show(status: dict[str, Any]) -> None:
        rollout = status["rollout"]
        heading = (
            f"{title} — {rollout['id']} v{rollout['version']}: {rollout['state']} "
            f"(wave {rollout['wave']}/{len(rollout['waves'])})"
        )
        rows = _rows(status)
        if shown and shown[-1] == (heading, rows):
            return
        shown.append((heading, rows))
        table = Table(*COLUMNS, title=heading, show_edge=False, header_style="bold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        console.print()

    return show


@dataclass
class DemoResult:
    baseline: dict[str, Any]
    bad: dict[str, Any]
    good: dict[str, Any]
    agents: dict[str, dict[str, Any]]
    simulator: dict[str, Any]
    fleet: dict[str, Any]


def _phase(
    op: Operator,
    title: str,
    version: int,
    waves: list[int],
    done: Callable[[dict[str, Any]], bool],
    **gates: Any,
) -> dict[str, Any]:
    """Create a rollout and wait for ``done``; the status returned carries ``took_s``."""
    console.rule(f"[bold]{title}")
    started = time.monotonic()
    rollout = op.create_rollout(version, waves, **gates)
    status = op.wait_rollout(rollout["id"], done, on_status=_reporter(title))
    return {**status, "took_s": round(time.monotonic() - started, 1)}


def finished(status: dict[str, Any]) -> bool:
    return status["rollout"]["state"] in FINAL_STATES


def settled(everyone: int) -> Callable[[dict[str, Any]], bool]:
    """Finished, and every device has reported an outcome (not only the gates' cohort)."""

    def check(status: dict[str, Any]) -> bool:
        totals = status["totals"]
        outcomes = sum(totals[s] for s in ("committed", "failed", "rolled_back", "timed_out"))
        return finished(status) and outcomes >= everyone

    return check


def _expect(status: dict[str, Any], state: str) -> dict[str, Any]:
    rollout = status["rollout"]
    if rollout["state"] != state:
        raise DemoError(
            f"rollout {rollout['id']} (v{rollout['version']}) ended "
            f"{rollout['state']}, expected {state}: {rollout['reason']}"
        )
    return status


def _installed(agent: AgentProcess) -> int | None:
    """The version the agent runs in slot ``main`` (``ferry-agent status --json``)."""
    current = (agent.status().get("slots", {}).get("main") or {}).get("current") or {}
    version = current.get("version")
    return version if isinstance(version, int) else None


def run_demo(
    data_dir: Path, devices: int, fail_rate: float, bundle_size: int, keep_running: bool
) -> DemoResult:
    shutil.rmtree(data_dir, ignore_errors=True)
    server = ServerProcess(data_dir / "server").start()
    console.print(
        f"[bold green]server[/] started on HTTP port {server.http_port} and MQTT port "
        f"{server.mqtt_port} for the demo's length (data in {data_dir})"
    )
    op = Operator(server.url, server.admin_token)
    agents: list[AgentProcess] = []
    simulator: SimulatorProcess | None = None
    try:
        v1, v2, v3 = op.publish_model(data_dir / "bundles", [False, True, False], bundle_size)
        console.print(
            f"registered {NAMESPACE}/{MODEL} v{v1} (good), v{v2} (bad probe), "
            f"v{v3} (good) — all Production"
        )
        token = op.enrollment_token(None)
        bad_seed = rollout_seed(
            f"{NAMESPACE}/{MODEL}",
            op.sdk.get_version(NAMESPACE, MODEL, v2).manifest_sha256,
            "main",
            "",
            BAD_WAVES,
        )  # what v2's rollout will hash with
        names = [canary_name("agent-1", bad_seed, BAD_WAVES), "agent-2", "agent-3"]
        agents = [AgentProcess(data_dir / name, name) for name in names]
        for agent in agents:
            agent.enroll(server.url, token)
            agent.start()
        simulator = SimulatorProcess(
            data_dir / "simulator", server.url, token, devices, fail_rate=fail_rate
        ).start()
        wait_until(
            lambda: op.fleet_status()["devices"] >= devices + len(agents),
            120,
            f"{devices + len(agents)} enrolled devices",
            interval=0.5,
        )
        console.print(
            f"enrolled {len(agents)} ferry-agent processes and {devices} simulated devices"
        )
        everyone = len(agents) + devices
        baseline = _expect(
            _phase(
                op,
                "baseline: v1 to everyone",
                v1,
                [100],
                settled(everyone),
                max_failure_pct=50,
                min_success_pct=50,
            ),
            "completed",
        )
        bad = _expect(
            _phase(
                op,
                "bad release: v2 (its probe fails)",
                v2,
                BAD_WAVES,
                finished,
                max_failure_pct=20,
                auto_rollback=True,
            ),
            "rolled_back",
        )
        canary = [
            a.device_id
            for a in agents
            if wave_index(bad["rollout"]["wave_seed"], a.device_id, BAD_WAVES) == 0
        ]
        console.print(
            f"v2 halted in wave {bad['rollout']['wave']} and rolled back "
            f"({bad['rollout']['reason']}); real agents in its canary wave: "
            f"{', '.join(canary) or 'none'}"
        )
        good = _expect(
            _phase(
                op,
                "good release: v3 to 100 %",
                v3,
                [5, 25, 100],
                settled(everyone),
                max_failure_pct=25,
                min_success_pct=70,
            ),
            "completed",
        )
        wait_until(
            lambda: all(_installed(a) == v3 for a in agents),
            60,
            "every ferry-agent to run v3",
            interval=0.5,
        )
        agent_status = {a.device_id: a.status() for a in agents}
        fleet = op.fleet_status()
        console.rule("[bold]done")
        print_summary(baseline, bad, good, fleet)
        if keep_running:
            console.print(
                f"API: {server.url}  (admin token in "
                f"{server.data_dir / 'admin-token'}); running until Ctrl-C …"
            )
            _wait_for_interrupt()
        sim_summary = simulator.stop()
        simulator = None
        return DemoResult(baseline, bad, good, agent_status, sim_summary, fleet)
    finally:
        if simulator is not None:
            simulator.stop()
        for agent in agents:
            agent.stop()
        op.close()
        server.stop()


def print_summary(
    baseline: dict[str, Any], bad: dict[str, Any], good: dict[str, Any], fleet: dict[str, Any]
) -> None:
    """What happened, in four lines a newcomer can check against the tables above."""

    def done(status: dict[str, Any]) -> str:
        rollout, totals = status["rollout"], status["totals"]
        return (
            f"{rollout['id']} v{rollout['version']} {rollout['state']}: "
            f"{totals['committed']}/{status['devices']} committed in {status['took_s']:.0f}s"
        )

    halted, totals = bad["rollout"], bad["totals"]
    untouched = bad["devices"] - totals["rolled_back"] - totals["failed"] - totals["timed_out"]
    versions = ", ".join(
        f"{m['model']} " + ", ".join(f"v{v} on {n}" for v, n in sorted(m["versions"].items()))
        for m in fleet["models"]
    )
    for label, text in (
        ("baseline", done(baseline)),
        (
            "bad release",
            (
                f"{halted['id']} v{halted['version']} halted in wave "
                f"{halted['wave']} of {len(halted['waves'])} and rolled back in "
                f"{bad['took_s']:.0f}s: {totals['rolled_back']} devices back on "
                f"v{baseline['rollout']['version']}, {untouched} never took it"
            ),
        ),
        ("good release", done(good) + " (100 %)"),
        ("fleet", f"{fleet['devices']} devices: {versions}"),
    ):
        console.print(f"[bold]{label:<13}[/]{text}", soft_wrap=True)


def _wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def main(
    devices: Annotated[int, typer.Option(help="Simulated devices next to the 3 real agents")] = 200,
    fail_rate: Annotated[
        float, typer.Option(help="Random probe failures of simulated devices")
    ] = 0.0,
    bundle_size: Annotated[int, typer.Option(help="Bytes of model weights per version")] = 1 << 20,
    data_dir: Annotated[Path, typer.Option(help="Wiped at start")] = Path(".ferry-demo"),
    keep_running: Annotated[bool, typer.Option(help="Leave everything running at the end")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the outcome here")] = None,
) -> None:
    """Run the whole demo; exit 0 when every phase ended as expected."""
    started = time.monotonic()
    data_dir = data_dir.resolve()
    try:
        result = run_demo(data_dir, devices, fail_rate, bundle_size, keep_running)
    except KeyboardInterrupt:
        console.print("[yellow]demo interrupted[/]; everything it started was stopped")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the demo's contract: one line, never a traceback
        console.print(f"[red]demo failed:[/red] {describe_failure(exc)}", soft_wrap=True)
        console.print(
            f"  logs: {data_dir / 'server' / 'server.log'} and {data_dir}/*/*.log", soft_wrap=True
        )
        raise typer.Exit(1) from None
    if json_out is not None:
        json_out.write_text(json.dumps(result.__dict__, indent=2, sort_keys=True))
    console.print(f"[bold green]demo finished in {time.monotonic() - started:.0f}s[/]")


def describe_failure(exc: Exception) -> str:
    """One line: what failed and where (an HTTP call names its request)."""
    if isinstance(exc, httpx.HTTPError):
        try:
            request = exc.request
            where = f" on {request.method} {request.url}"
        except RuntimeError:
            where = ""
        return f"{type(exc).__name__}{where}: {exc or 'no detail'}"
    return f"{exc}" if isinstance(exc, DemoError) else f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    typer.run(main)
