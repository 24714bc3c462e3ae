"""Rollout of a model to a simulated fleet: seconds from create to 100 % committed.

    .venv/bin/python bench/bench_rollout.py [--devices 1000 10000] [--plans 100 1,10,50,100]
                                            [--postgres] [--quick] [--model-mb 1]
                                            [--profile DIR]

Real processes: Mosquitto (the example ACL and per-device logins, on a free
port), ``ferry server`` (SQLite, or with ``--postgres`` a scratch PostgreSQL database
created and dropped by the run; local blobs; deltas off) pointed at it, and one
``ferry simulate`` process for the whole fleet (push only: a long poll period,
zero time per state; 1 % of the devices download and hash the bundle (1 MB by
default, ``--model-mb``), the rest HEAD it). For every wave plan (cumulative
percentages), a fresh version is rolled out with zero bake time and the clock
runs from ``POST /rollouts`` until every device has reported ``committed``.
Printed per run: seconds, broker messages per wave (notices published, status
messages received), server CPU seconds of the rollout and **server CPU
milliseconds per device-update** (everything one device costs the server in one
rollout: desired state, manifest, blob, reports, gate bookkeeping). Enrolment is
measured apart (its seconds and server CPU, until every device has fetched its
first desired state) and excluded from the per-update figure. ``--profile DIR``
records the server with py-spy during each rollout (``DIR/<devices>-<waves>.svg``,
plus a raw collapsed-stack file for grepping).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e._stack import Stack

MB = 1024 * 1024
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TIMEOUT_S = 1800.0


def _plan(text: str) -> list[int]:
    """A wave plan as cumulative percentages, e.g. ``1,10,50,100``; it must end at 100."""
    waves = [int(part) for part in text.split(",")]
    if waves != sorted(set(waves)) or waves[-1] != 100 or waves[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: cumulative percentages rising to 100")
    return waves


def _status_messages(stack: Stack) -> float:
    """MQTT status messages the server took in (first copies and duplicates of HTTP ones)."""
    return sum(
        stack.metric("ferry_mqtt_status_messages_total", outcome=outcome)
        for outcome in ("accepted", "duplicate")
    )


def _check_ins(stack: Stack) -> float:
    """Desired-state requests the server answered, computed or from its cache."""
    return sum(
        stack.metric("ferry_checkin_duration_seconds_count", path=path)
        for path in ("computed", "cached")
    )


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _server_cpu(stack: Stack) -> float:
    assert stack.server.process is not None
    return _cpu(stack.server.process.pid)


def _others_cpu(stack: Stack) -> tuple[float, float]:
    """CPU seconds of Mosquitto and of the simulator (their own processes, children too)."""
    broker = stack.broker.process.pid if stack.broker.process is not None else None
    sims = [sim.process.pid for sim in stack.sims if sim.process is not None]
    return (_cpu(broker) if broker else 0.0), sum(_tree_cpu(pid) for pid in sims)


def _tree_cpu(pid: int) -> float:
    process = psutil.Process(pid)
    return _cpu(pid) + sum(_cpu(child.pid) for child in process.children(recursive=True))


@contextmanager
def scratch_postgres() -> Iterator[str]:
    """A PostgreSQL database created for this run and dropped after it."""
    import psycopg

    name = f"ferry_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def profiled(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy records ``pid`` (idle samples left out) while the block runs, when ``out``."""
    if out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    recorders = [
        subprocess.Popen(
            [
                str(spy) if spy.exists() else "py-spy",
                "record",
                "-p",
                str(pid),
                "-r",
                "50",
                "-f",
                fmt,
                "-o",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fmt, path in (("flamegraph", out), ("raw", out.with_suffix(".txt")))
    ]
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(2)  # SIGINT: py-spy writes its file and exits
        for recorder in recorders:
            recorder.wait(timeout=120)


def run_fleet(
    devices: int,
    plans: list[list[int]],
    workdir: Path,
    database_url: str = "",
    *,
    model_bytes: int = MB,
    profile: Path | None = None,
) -> Iterator[dict[str, object]]:
    """One fleet; yields a row per rollout as soon as it has finished."""
    stack = Stack(workdir)
    stack.server.env["FERRY_DELTAS_ENABLED"] = "false"  # simulated devices fetch full bundles
    if database_url:
        stack.server.env["FERRY_DATABASE_URL"] = database_url
    stack.start()
    assert stack.op is not None
    op = stack.op
    try:
        versions = op.publish_model(workdir / "bundles", [False] * len(plans), model_bytes)
        enrol_cpu = _server_cpu(stack)
        started = time.monotonic()
        # One loopback source address per 20,000 MQTT connections (ephemeral ports).
        sources = [f"127.0.0.{n + 1}" for n in range((devices - 1) // 20000 + 1)]
        sources = sources if len(sources) > 1 else []
        stack.simulate(
            devices,
            "bench",
            "--step-delay",
            "0",
            "--poll-interval",
            "600",
            "--verify-sample",
            "0.01",
            *(arg for source in sources for arg in ("--source-address", source)),
        )
        stack.wait(lambda: op.fleet_status()["devices"] >= devices, "enrolment", TIMEOUT_S)
        # The simulator starts its devices once all enrolled; each first fetches its desired
        # state (its first login): enrolment's tail, not the rollout's cost.
        stack.wait(lambda: _check_ins(stack) >= devices, "first check-ins", TIMEOUT_S)
        enrolled_s = time.monotonic() - started
        time.sleep(max(5.0, devices / 1000))  # let every device finish its MQTT login
        enrol = {
            "enrol_s": round(enrolled_s, 1),
            "enrol_cpu_s": round(_server_cpu(stack) - enrol_cpu, 1),
            "model_mb": round(model_bytes / MB, 2),
        }
        assert stack.server.process is not None
        for plan, version in zip(plans, versions, strict=True):
            out = profile / f"{devices}-{'-'.join(map(str, plan))}.svg" if profile else None
            with profiled(stack.server.process.pid, out):
                row = _one_rollout(stack, devices, plan, version)
            yield {**row, **enrol}
    finally:
        stack.stop()


def _one_rollout(stack: Stack, devices: int, plan: list[int], version: int) -> dict[str, object]:
    assert stack.op is not None
    notices = stack.metric("ferry_mqtt_notices_published_total", kind="group")
    statuses = _status_messages(stack)
    sent = stack.metric("ferry_served_bytes_total", kind="full")
    broker_cpu, sim_cpu = _others_cpu(stack)
    cpu = _server_cpu(stack)
    started = time.monotonic()
    rollout = stack.op.create_rollout(version, plan, min_success_pct=100, max_failure_pct=100)

    def done() -> bool:
        assert stack.op is not None
        try:
            status = stack.op.rollout_status(rollout["id"])
        except httpx.HTTPError:  # a saturated server answers late: ask again
            return False
        finished = status["rollout"]["state"] == "completed"
        return finished and status["totals"]["committed"] >= devices

    stack.wait(done, f"{devices} devices to commit v{version}", TIMEOUT_S)
    seconds = time.monotonic() - started
    cpu = _server_cpu(stack) - cpu
    broker_after, sim_after = _others_cpu(stack)
    sent = stack.metric("ferry_served_bytes_total", kind="full") - sent
    waves = len(plan)
    notices = stack.metric("ferry_mqtt_notices_published_total", kind="group") - notices
    statuses = _status_messages(stack) - statuses
    return {
        "devices": devices,
        "waves": ",".join(map(str, plan)),
        "seconds": round(seconds, 1),
        "notices_per_wave": round(notices / waves, 1),
        "status_msgs_per_device": round(statuses / devices, 2),
        "server_cpu_s": round(cpu, 1),
        "cpu_ms_per_update": round(cpu * 1000 / devices, 2),
        "broker_cpu_s": round(broker_after - broker_cpu, 1),
        "simulator_cpu_s": round(sim_after - sim_cpu, 1),
        "blob_bytes_served": int(sent),
        "load_avg_1m": round(psutil.getloadavg()[0], 1),
    }


def _raise_open_files(wanted: int) -> int:
    """Each simulated device holds one MQTT socket, and so does Mosquitto (a child of this
    process, like the simulator): raise the limit they inherit (root may raise the hard one,
    up to ``fs.nr_open``); returns the limit reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument(
        "--plans",
        type=_plan,
        nargs="+",
        default=[[100], [1, 10, 50, 100]],
        help="wave plans as cumulative percentages (default: 100 and 1,10,50,100)",
    )
    parser.add_argument("--quick", action="store_true", help="200 devices")
    parser.add_argument("--model-mb", type=float, default=1.0, help="bundle size in MB (default 1)")
    parser.add_argument("--profile", type=Path, help="py-spy flame graphs of the server here")
    parser.add_argument(
        "--fleet-100k",
        action="store_true",
        help="100,000 devices, one rollout in one wave (long: see docs/scaling.md)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="metadata in a scratch PostgreSQL database (127.0.0.1:5432)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.devices = [200]
    if args.fleet_100k:
        args.devices, args.plans = [100_000], [[100]]
    wanted = max(args.devices) + 4096
    if (reached := _raise_open_files(wanted)) < wanted:
        parser.error(
            f"{max(args.devices)} devices need {wanted} open files per process (one MQTT "
            f"socket each in the simulator and in Mosquitto); the limit here is {reached}: "
            "raise the hard limit (ulimit -Hn, fs.nr_open) first"
        )
    rows: list[dict[str, object]] = []
    for devices in args.devices:
        with (
            tempfile.TemporaryDirectory(prefix="ferry-bench-rollout-") as tmp,
            scratch_postgres() if args.postgres else nullcontext("") as database_url,
        ):
            fleet = run_fleet(
                devices,
                args.plans,
                Path(tmp),
                database_url,
                model_bytes=int(args.model_mb * MB),
                profile=args.profile,
            )
            for row in fleet:
                row["database"] = "postgresql" if database_url else "sqlite"
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(
        f"\n{'database':>10} {'devices':>8} {'MB':>5} {'waves':>12} {'seconds':>8} "
        f"{'notices/wave':>13} {'MQTT msgs/device':>17} {'server CPU s':>13} "
        f"{'CPU ms/device-update':>21} {'enrol s':>8} {'enrol CPU s':>12} {'load':>5}"
    )
    for row in rows:
        print(
            f"{row['database']:>10} {row['devices']:>8} {row['model_mb']:>5} {row['waves']:>12} "
            f"{row['seconds']:>8} {row['notices_per_wave']:>13} "
            f"{row['status_msgs_per_device']:>17} {row['server_cpu_s']:>13} "
            f"{row['cpu_ms_per_update']:>21} {row['enrol_s']:>8} {row['enrol_cpu_s']:>12} "
            f"{row['load_avg_1m']:>5}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
