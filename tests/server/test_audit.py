"""The audit log is hash-chained: edits and deletions made behind the server's back
are detected by the API and by `ferry audit verify`, and concurrent appends chain."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from ferry.server.audit import service as audit
from ferry.server.core.db import make_engine, session_scope
from tests.server.conftest import API, Harness


def _cli_verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ferry.cli.server_cmds",
            "audit",
            "verify",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def _db(h: Harness) -> sqlite3.Connection:
    return sqlite3.connect(h.settings.data_dir / "ferry.db")


def test_every_write_is_recorded_with_actor(h: Harness) -> None:
    publisher = h.token("publisher", ["vision"], name="ci-pipeline")
    h.register(headers=publisher)
    actions = [
        (e["actor"], e["action"])
        for e in h.client.get(f"{API}/audit?limit=1000", headers=h.admin).json()
    ]
    assert ("ci-pipeline", "blob.put") in actions
    assert ("ci-pipeline", "version.create") in actions
    assert actions[0] == ("server", "token.create")


def test_intact_chain_verifies(h: Harness) -> None:
    h.register()
    report = h.client.get(f"{API}/audit/verify", headers=h.admin).json()
    assert report["ok"] is True and report["first_bad_id"] is None and report["entries"] >= 5
    result = _cli_verify(h.settings.data_dir)
    assert result.returncode == 0, result.stderr


def test_edited_row_is_detected(h: Harness) -> None:
    h.register()
    with _db(h) as db:
        db.execute("UPDATE audit_entry SET actor = 'someone-else' WHERE id = 3")
    report = h.client.get(f"{API}/audit/verify", headers=h.admin).json()
    assert (report["ok"], report["first_bad_id"]) == (False, 3)
    result = _cli_verify(h.settings.data_dir)
    assert result.returncode == 1 and "entry 3" in result.stderr


def test_deleted_row_is_detected(h: Harness) -> None:
    h.register()
    with _db(h) as db:
        db.execute("DELETE FROM audit_entry WHERE id = 2")
    report = h.client.get(f"{API}/audit/verify", headers=h.admin).json()
    assert (report["ok"], report["first_bad_id"]) == (False, 2)


def test_truncated_tail_is_detected(h: Harness) -> None:
    h.register()
    with _db(h) as db:
        last = db.execute("SELECT max(id) FROM audit_entry").fetchone()[0]
        db.execute("DELETE FROM audit_entry WHERE id = ?", (last,))
    report = h.client.get(f"{API}/audit/verify", headers=h.admin).json()
    assert (report["ok"], report["first_bad_id"]) == (False, last)


def test_export_is_json_lines_of_every_entry(h: Harness) -> None:
    h.register()
    r = h.client.get(f"{API}/audit/export", headers=h.admin)
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [e["id"] for e in lines] == list(range(1, len(lines) + 1))
    assert all(lines[i]["prev_hash"] == lines[i - 1]["hash"] for i in range(1, len(lines)))


def test_concurrent_appends_form_one_chain(h: Harness) -> None:
    engine = make_engine(h.settings.database_url)

    def worker(n: int) -> None:
        for i in range(10):
            with session_scope(engine) as session:
                audit.append(
                    session, actor=f"t{n}", action="test", target=str(i), details={"score": 0.5}
                )

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with session_scope(engine) as session:
        report = audit.verify_chain(session)
    engine.dispose()
    assert report.ok and report.entries >= 40
