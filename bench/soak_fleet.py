"""Soak: rollouts through two replicas while the broker, a server and agents are killed.

    .venv/bin/python bench/soak_fleet.py [--devices 60] [--agents 3] [--rounds 3] [--seed 7]

The compose topology as processes (`tests/e2e/_replicas.py`: nginx, two `ferry
server` replicas on one scratch PostgreSQL database, Mosquitto, real agents, one
simulated fleet). Each round rolls a new version out in waves 10/50/100 and, while
it runs, kills with SIGKILL — at moments drawn from ``--seed`` — the broker (then
restarts it), one server replica (then restarts it) and a random real agent (then
restarts it). After the last round it waits for the fleet to settle and prints:

    reports made    the simulated devices' distinct reports
    reports stored  the distinct reports the server stored for them
    mismatched      devices whose server view (installed version) differs from the
                    device's own (agents: ``ferry-agent status``; simulated devices:
                    the simulator's summary) — must be 0

and exits 1 unless every rollout completed, nothing was lost and nothing mismatched.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_rollout import scratch_postgres  # bench/ is the script folder

from ferry.cli.demo import FINAL_STATES, _installed, wait_until
from tests.e2e._replicas import Topology


def _kill_during(stack: Topology, rng: random.Random, rollout_id: str) -> list[str]:
    """While the rollout runs: kill -9 the broker, a replica and an agent, each restarted."""
    assert stack.op is not None
    done: list[str] = []
    victims = ["broker", "server", "agent"]
    rng.shuffle(victims)
    for victim in victims:
        time.sleep(rng.uniform(0.5, 3.0))
        if stack.op.rollout_status(rollout_id)["rollout"]["state"] in FINAL_STATES:
            break
        if victim == "broker":
            assert stack.broker.process is not None
            stack.broker.process.send_signal(signal.SIGKILL)
            stack.broker.process.wait()
            time.sleep(rng.uniform(0.2, 2.0))
            stack.start_broker()
        elif victim == "server":
            server = rng.choice(stack.servers)
            server.kill()
            time.sleep(rng.uniform(0.2, 2.0))
            server.start()
        else:
            agent = rng.choice(stack.agents)
            agent.kill()
            time.sleep(rng.uniform(0.2, 2.0))
            agent.start()
        done.append(victim)
    return done


def soak(args: argparse.Namespace, workdir: Path, database_url: str) -> int:
    rng = random.Random(args.seed)
    stack = Topology(workdir, database_url).start()
    try:
        op = stack.op
        assert op is not None
        versions = op.publish_model(workdir / "bundles", [False] * args.rounds, size=65536)
        token = op.enrollment_token(None)
        agents = stack.add_agents(args.agents, token)
        sim = stack.simulate(args.devices, token)
        everyone = args.devices + args.agents
        wait_until(lambda: op.fleet_status()["devices"] >= everyone, 180, "the fleet enrolled")
        outcomes = []
        for version in versions:
            rollout = op.create_rollout(
                version,
                [10, 50, 100],
                max_failure_pct=20,
                min_success_pct=90,
                in_progress_timeout_s=300,
            )
            kills = _kill_during(stack, rng, rollout["id"])
            status = op.wait_rollout(
                rollout["id"], lambda s: s["rollout"]["state"] in FINAL_STATES, timeout=args.timeout
            )
            outcomes.append((rollout["id"], status["rollout"]["state"], kills))
            print(
                f"{rollout['id']} v{version}: {status['rollout']['state']} "
                f"(killed: {', '.join(kills) or 'nothing'})",
                flush=True,
            )
        final = versions[-1]
        wait_until(lambda: all(_installed(a) == final for a in agents), 180, "agents settled")
        time.sleep(5)  # the last reports in flight land
        summary = sim.stop()
        stack.sims.clear()
        server = stack.server_view()
        device = {
            **{str(k): int(v) for k, v in summary.get("installed", {}).items()},
            **{a.device_id: _installed(a) for a in agents},
        }
        mismatched = sorted(d for d, v in device.items() if server.get(d) != v)
        stored = _stored_reports(op, list(summary.get("installed", {})))
        made = int(summary.get("reports_made", 0))
        print(
            json.dumps(
                {
                    "rollouts": [o[:2] for o in outcomes],
                    "reports_made": made,
                    "reports_stored": stored,
                    "mismatched": len(mismatched),
                    "mismatched_devices": mismatched[:20],
                },
                indent=1,
            )
        )
        ok = (
            all(state == "completed" for _, state, _ in outcomes)
            and stored == made
            and not mismatched
        )
        return 0 if ok else 1
    finally:
        stack.stop()


def _stored_reports(op: object, device_ids: list[str]) -> int:
    """Distinct reports the server stored for the simulated devices (their full history)."""
    total = 0
    for device_id in device_ids:
        detail = op._call("GET", f"/devices/{device_id}?history=1000")  # type: ignore[attr-defined]
        total += len({h["report_id"] for h in detail["history"]})
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=60)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="ferry-soak-") as tmp,
        scratch_postgres() as database_url,
    ):
        return soak(args, Path(tmp), database_url)


if __name__ == "__main__":
    sys.exit(main())
