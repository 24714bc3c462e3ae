"""Status-report ingest alone: reports per CPU-second and database statements per report.

    .venv/bin/python bench/bench_ingest.py [--devices 2000] [--batch 200] [--postgres]

An in-process app (the test harness: frozen clock, no loops) on SQLite or a
scratch PostgreSQL database, ``--devices`` enrolled devices in one running
rollout; then the six reports of one update per device (downloading …
committed) go through ``ingest_batch`` in MQTT-sized batches, as the MQTT
subscriber sends them, with ``last_seen_at`` noted for the batched writer.
Printed: reports, wall seconds, this process's CPU seconds (the server side of
ingest; the database's own CPU is not included), reports per CPU-second, and SQL
statements and write statements (INSERT/UPDATE/DELETE) per report.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_rollout import scratch_postgres
from ferry.protocol.documents import StatusReport
from ferry.protocol.timefmt import format_time
from ferry.server.checkin.ingest import ingest_batch
from ferry.server.core.db import session_scope
from tests.fleet.harness import build_fleet, report_doc

STATES = ("downloading", "verifying", "staged", "switching", "probing", "committed")


def run(devices: int, batch: int, database_url: str, workdir: Path) -> dict[str, Any]:
    fleet, client = build_fleet(workdir / "data", database_url=database_url)
    with client:
        fleet.namespace("vision")
        fleet.model("vision", "det")
        version = fleet.version()
        token = fleet.enrollment_token()
        ids = [fleet.enroll(token, f"ing-{i:06d}").device_id for i in range(devices)]
        rollout = fleet.rollout(version=str(version), waves=[100])
        fleet.tick()
        at = format_time(fleet.clock.now)
        reports = [
            StatusReport.from_dict(
                {
                    **report_doc(
                        device,
                        state,
                        to_version=version,
                        at=at,
                        rollout_id=rollout["id"],
                        report_id=str(uuid.uuid4()),
                    ),
                    "report_seq": seq,
                }
            )
            for seq, state in enumerate(STATES, start=1)
            for device in ids
        ]
        engine = fleet.app.state.ctx.engine
        statements: list[str] = []

        def record(_c: object, _cur: object, sql: str, *_: object) -> None:
            statements.append(sql.lstrip().split(None, 1)[0].upper())

        event.listen(engine, "before_cursor_execute", record)
        touch = fleet.runtime.last_seen.touch
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(reports), batch):
            with session_scope(engine) as session:
                ingest_batch(session, reports[start : start + batch], fleet.clock.now, touch)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        event.remove(engine, "before_cursor_execute", record)
        committed = fleet.status(rollout["id"])["totals"]["committed"]
    writes = sum(1 for s in statements if s in ("INSERT", "UPDATE", "DELETE"))
    return {
        "database": "postgresql" if database_url else "sqlite",
        "devices": devices,
        "batch": batch,
        "reports": len(reports),
        "committed": committed,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "reports_per_cpu_s": round(len(reports) / cpu),
        "statements_per_report": round(len(statements) / len(reports), 3),
        "write_statements_per_report": round(writes / len(reports), 3),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="ferry-bench-ingest-") as tmp,
        scratch_postgres() if args.postgres else nullcontext("") as url,
    ):
        row = run(args.devices, args.batch, url, Path(tmp))
    print(json.dumps(row))
    return 0 if row["committed"] == args.devices else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
