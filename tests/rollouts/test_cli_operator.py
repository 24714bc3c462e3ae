"""The operator's questions, asked from the terminal against a real `ferry server`:
which devices failed and why, when is it done (for a script). Each test reads what a person sees (text at 80 and
200 columns), what a script reads (``--json``) and the exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferry.protocol.waves import wave_index
from tests.fleet.harness import report_doc
from tests.rollouts.cli_harness import add_version, enroll, ferry, publish, send_report, server

__all__ = ["server"]

PROBE_OUTPUT = (
    'Traceback (most recent call last):\n  File "probe.py", line 9, in <module>\n'
    "    check(session.run(None, feed))\n"
    "AssertionError: output 'scores' has shape [1, 4], expected [1, 3]"
)


@pytest.fixture(scope="module")
def http(server: tuple[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server[0], headers={"Authorization": f"Bearer {server[1]}"}
    ) as client:
        publish(client)
        yield client


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def devices_of(
    http: httpx.Client, batch: str, n: int, hardware: str = "x86_64"
) -> list[dict[str, Any]]:
    r = http.post(
        "/api/v1/enrollment-tokens", json={"namespace": "vision", "name": batch, "max_uses": None}
    )
    token = r.json()["token"]
    return [enroll(http, token, f"{batch}-{i:02d}", hardware, {"batch": batch}) for i in range(n)]


def table_rows(output: str) -> list[list[str]]:
    """The cells of a rich table's body rows (the header's separators are ┃, not │)."""
    return [
        [cell.strip() for cell in line.split("│")] for line in output.splitlines() if "│" in line
    ]


def report(
    server: tuple[str, str],
    device: dict[str, Any],
    state: str,
    rollout_id: str,
    version: int = 1,
    error_code: str | None = None,
    detail: str = "",
) -> None:
    doc = report_doc(
        device["device_id"],
        state,
        to_version=version,
        rollout_id=rollout_id,
        at=now(),
        error_code=error_code,
    )
    doc["detail"] = detail
    send_report(server[0], device, doc)


def test_rollout_devices_names_the_failed_devices_and_the_probe_output(
    server: tuple[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    fleet = devices_of(http, "probe", 3)
    created = ferry(
        server,
        tmp_path,
        "rollout",
        "create",
        "vision/det@1",
        "--selector",
        "batch=probe",
        "--waves",
        "100",
        "--bake",
        "3600",
        "--json",
    )
    rollout_id = json.loads(created.output)["id"]
    report(server, fleet[0], "committed", rollout_id)
    report(
        server, fleet[1], "rolled_back", rollout_id, error_code="probe_failed", detail=PROBE_OUTPUT
    )

    narrow = ferry(
        server, tmp_path, "rollout", "devices", rollout_id, "--state", "failed", columns=80
    )
    assert narrow.exit_code == 0, narrow.output
    lines = narrow.output.splitlines()
    assert lines[0] == f"{rollout_id}: 1 device (state failed)"
    assert all(len(line) <= 80 for line in lines), narrow.output
    assert "probe-01" in narrow.output and "rolled_back" in narrow.output
    assert "probe_failed" in narrow.output and "expected [1, 3]" in narrow.output
    assert "last report" not in narrow.output and "probe-00" not in narrow.output

    wide = ferry(server, tmp_path, "rollout", "devices", rollout_id, columns=200)
    assert wide.exit_code == 0 and "last report" in wide.output
    assert wide.output.splitlines()[0] == f"{rollout_id}: 3 devices"
    rows = {row[0]: row for row in table_rows(wide.output)}
    assert rows["probe-00"][1:3] == ["1", "committed"]
    assert rows["probe-02"][1:3] == ["1", "pending"] and rows["probe-02"][4] == "never"

    scripted = ferry(
        server, tmp_path, "rollout", "devices", rollout_id, "--state", "failed", "--json"
    )
    body = json.loads(scripted.output)
    assert (body["total"], body["shown"]) == (1, 1)
    [row] = body["devices"]
    assert (row["device_id"], row["wave"], row["error_code"]) == ("probe-01", 1, "probe_failed")
    assert row["error_message"] == PROBE_OUTPUT

    limited = ferry(server, tmp_path, "rollout", "devices", rollout_id, "--limit", "2")
    assert "… 1 more; raise --limit or use --json" in limited.output

    typo = ferry(server, tmp_path, "rollout", "devices", rollout_id, "--state", "faild")
    assert typo.exit_code == 1 and "unknown device state 'faild'" in typo.output
    no_wave = ferry(server, tmp_path, "rollout", "devices", rollout_id, "--wave", "2")
    assert no_wave.exit_code == 1 and "has waves 1..1" in no_wave.output
    assert ferry(server, tmp_path, "rollout", "cancel", rollout_id).exit_code == 0


def in_background(work: Callable[[], None]) -> threading.Thread:
    """Act as the devices while the CLI blocks in the foreground."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def create(server: tuple[str, str], tmp_path: Path, batch: str, *options: str) -> str:
    return str(create_json(server, tmp_path, batch, *options)["id"])


def create_json(
    server: tuple[str, str], tmp_path: Path, batch: str, *options: str
) -> dict[str, Any]:
    result = ferry(
        server,
        tmp_path,
        "rollout",
        "create",
        "vision/det@1",
        "--selector",
        f"batch={batch}",
        *options,
        "--json",
    )
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def test_wait_exits_0_on_completed_and_prints_a_line_per_change(
    server: tuple[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    fleet = devices_of(http, "wait-ok", 6)
    rollout = create_json(server, tmp_path, "wait-ok", "--waves", "50,100")
    rollout_id, seed = rollout["id"], rollout["wave_seed"]
    first = [d for d in fleet if wave_index(seed, d["device_id"], [50, 100]) == 0]
    later = [d for d in fleet if d not in first]

    def devices_commit() -> None:
        for group in (first, later):
            time.sleep(0.6)
            for device in group:
                report(server, device, "committed", rollout_id)

    thread = in_background(devices_commit)
    waited = ferry(
        server, tmp_path, "rollout", "wait", rollout_id, "--interval", "0.2", "--timeout", "60"
    )
    thread.join()
    assert waited.exit_code == 0, waited.output
    lines = waited.output.splitlines()
    assert lines[0].startswith(f"{rollout_id} running wave 1/2 (50%): 0/6 committed")
    assert any(line.startswith(f"{rollout_id} running wave 2/2 (100%)") for line in lines)
    assert len(lines) == len(set(lines)), "a line per change, never the same line twice"
    assert lines[-1] == f"{rollout_id} completed: 6/6 committed (gate passed: 6/6 committed)"


def test_wait_exit_codes_say_halted_rolled_back_cancelled_or_timed_out(
    server: tuple[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    fleet = devices_of(http, "wait-bad", 2)
    strict = ("--waves", "100", "--max-failures", "0", "--max-failure-pct", "100")
    halted = create(server, tmp_path, "wait-bad", *strict)
    report(server, fleet[0], "failed", halted, error_code="probe_failed")
    waited = ferry(server, tmp_path, "rollout", "wait", halted, "--interval", "0.2")
    assert waited.exit_code == 3, waited.output
    assert waited.output.splitlines()[-1] == (
        f"{halted} halted: 0/2 committed (failure limit crossed in wave 1: 1 of 2 devices "
        f"failed) — see `ferry rollout devices {halted} --state failed`"
    )
    assert ferry(server, tmp_path, "rollout", "rollback", halted).exit_code == 0
    gone = ferry(server, tmp_path, "rollout", "wait", halted, "--json")
    assert gone.exit_code == 4 and json.loads(gone.output)["rollout"]["state"] == "rolled_back"

    auto = create(server, tmp_path, "wait-bad", *strict, "--auto-rollback")
    report(server, fleet[1], "failed", auto, error_code="probe_failed")
    assert ferry(server, tmp_path, "rollout", "wait", auto, "--interval", "0.2").exit_code == 4

    slow = create(server, tmp_path, "wait-bad", "--waves", "100", "--bake", "3600")
    timed_out = ferry(
        server, tmp_path, "rollout", "wait", slow, "--timeout", "0.5", "--interval", "0.2"
    )
    assert timed_out.exit_code == 124
    assert f"{slow} is still running after 0.5 s" in timed_out.output
    in_background(lambda: (time.sleep(0.5), ferry(server, tmp_path, "rollout", "cancel", slow)))
    assert ferry(server, tmp_path, "rollout", "wait", slow, "--interval", "0.2").exit_code == 5


def test_watch_without_a_terminal_prints_lines_and_ends_with_the_rollout(
    server: tuple[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    fleet = devices_of(http, "watch", 2)
    rollout_id = create(server, tmp_path, "watch", "--waves", "100")

    def devices_commit() -> None:
        time.sleep(0.6)
        report(server, fleet[0], "downloading", rollout_id)
        time.sleep(0.6)
        for device in fleet:
            report(server, device, "committed", rollout_id)

    thread = in_background(devices_commit)
    watched = ferry(server, tmp_path, "rollout", "show", rollout_id, "--watch", "--interval", "0.2")
    thread.join()
    assert watched.exit_code == 0, watched.output
    lines = watched.output.splitlines()
    assert lines[:2] == [
        (
            f"{rollout_id} running wave 1/1 (100%): 0/2 committed, 0 failed, 0 updating, "
            "2 pending; gate waiting"
        ),
        (
            f"{rollout_id} running wave 1/1 (100%): 0/2 committed, 0 failed, 1 updating, "
            "1 pending; gate waiting"
        ),
    ]
    assert lines[-1] == (
        f"{rollout_id} completed wave 1/1 (100%): 2/2 committed, 0 failed, "
        "0 updating, 0 pending; gate passed: 2/2 committed"
    )
    assert len(lines) == len(set(lines)) <= 4, "a line per change, then it ends by itself"


def test_plan_shows_waves_downloads_and_skipped_devices_and_create_refuses_with_the_list(
    server: tuple[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    token = http.post(
        "/api/v1/enrollment-tokens", json={"namespace": "vision", "name": "plan", "max_uses": None}
    ).json()["token"]
    for name, hardware in [
        ("plan-x86-0", "x86_64"),
        ("plan-x86-1", "x86_64"),
        ("plan-arm-0", "aarch64"),
        ("plan-arm-1", "aarch64"),
        ("plan-rpi-0", "rpi4"),
    ]:
        enroll(http, token, name, hardware, {"batch": "plan"})
    version = add_version(http, b"weights for plan", hardware=["x86_64", "aarch64"])
    ref = f"vision/det@{version}"

    refused = ferry(
        server,
        tmp_path,
        "rollout",
        "plan",
        ref,
        "--selector",
        "batch=plan",
        "--waves",
        "50,100",
        columns=80,
    )
    assert refused.exit_code == 1, refused.output
    assert "refused:" in refused.output and "--skip-incompatible" in refused.output
    assert "plan-rpi-0" in refused.output and "incompatible" in refused.output

    planned = ferry(
        server,
        tmp_path,
        "rollout",
        "plan",
        ref,
        "--selector",
        "batch=plan",
        "--waves",
        "50,100",
        "--skip-incompatible",
        columns=80,
    )
    assert planned.exit_code == 0, planned.output
    lines = planned.output.splitlines()
    assert all(len(line) <= 80 for line in lines), planned.output
    assert lines[0] == f"plan: {ref} → batch=plan (slot main), waves 50,100"
    assert lines[1] == "matching devices: 5, targeted: 4, skipped: 1"
    assert "total: 64 bytes to serve — 4 full, 0 delta, 0 already on it" in lines
    assert "skipped (incompatible)" in planned.output
    assert "plan-rpi-0 │ rpi4" in planned.output, "device and hardware are never cut"
    waves = {row[0]: row for row in table_rows(planned.output) if row[0] in ("1", "2")}
    assert int(waves["1"][2]) + int(waves["2"][2]) == 4

    as_json = json.loads(
        ferry(
            server,
            tmp_path,
            "rollout",
            "plan",
            ref,
            "--selector",
            "batch=plan",
            "--waves",
            "50,100",
            "--skip-incompatible",
            "--json",
        ).output
    )
    assert [d["device_id"] for d in as_json["skipped"]] == ["plan-rpi-0"]
    dry = ferry(
        server,
        tmp_path,
        "rollout",
        "create",
        ref,
        "--selector",
        "batch=plan",
        "--waves",
        "50,100",
        "--skip-incompatible",
        "--dry-run",
        columns=80,
    )
    assert dry.exit_code == 0 and dry.output == planned.output
    assert ferry(server, tmp_path, "rollout", "list", "--json").output.count(ref) == 0

    create = ferry(server, tmp_path, "rollout", "create", ref, "--selector", "batch=plan")
    assert create.exit_code == 1
    assert (
        "  plan-rpi-0 (rpi4): hardware rpi4 is not in the version's list (x86_64, aarch64)"
        in create.output.splitlines()
    )
    created = ferry(
        server,
        tmp_path,
        "rollout",
        "create",
        ref,
        "--selector",
        "batch=plan",
        "--waves",
        "50,100",
        "--skip-incompatible",
        "--json",
    )
    assert created.exit_code == 0, created.output
    rollout = json.loads(created.output)
    assert rollout["wave_seed"] == as_json["wave_seed"]
    listed = json.loads(
        ferry(server, tmp_path, "rollout", "devices", rollout["id"], "--json").output
    )
    planned_waves = {
        d["device_id"]: w["wave"] for w in as_json["wave_members"] for d in w["devices"]
    }
    assert {d["device_id"]: d["wave"] for d in listed["devices"]} == planned_waves
    assert ferry(server, tmp_path, "rollout", "cancel", rollout["id"]).exit_code == 0


def test_a_selector_that_matches_nobody_is_refused_unless_allow_empty(
    server: tuple[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    refused = ferry(
        server, tmp_path, "rollout", "create", "vision/det@1", "--selector", "batch=nobody"
    )
    assert refused.exit_code == 1
    assert (
        "the rollout would target no device: selector batch=nobody matches none" in refused.output
    )
    assert "--allow-empty" in refused.output
    planned = ferry(
        server, tmp_path, "rollout", "plan", "vision/det@1", "--selector", "batch=nobody"
    )
    assert planned.exit_code == 1 and "matching devices: 0, targeted: 0" in planned.output
    allowed = ferry(
        server,
        tmp_path,
        "rollout",
        "create",
        "vision/det@1",
        "--selector",
        "batch=nobody",
        "--allow-empty",
        "--json",
    )
    assert allowed.exit_code == 0, allowed.output


def test_rollback_names_devices_without_a_previous_version_and_status_names_their_state(
    server: tuple[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    fleet = devices_of(http, "first", 3)
    rollout_id = create(server, tmp_path, "first", "--waves", "100", "--bake", "3600")
    report(server, fleet[0], "committed", rollout_id)
    report(server, fleet[1], "committed", rollout_id)
    report(
        server,
        fleet[2],
        "rolled_back",
        rollout_id,
        error_code="probe_failed",
        detail="probe: exit 1",
    )
    rolled = ferry(server, tmp_path, "rollout", "rollback", rollout_id, columns=80)
    assert rolled.exit_code == 0, rolled.output
    text = " ".join(rolled.output.split())
    assert f"{rollout_id}: rolled_back, wave 1/1 (100%)" in text
    assert (
        "0 device(s) go back to their previous version; 2 had no previous version and "
        "stay on v1: first-00, first-01"
    ) in text

    status = ferry(server, tmp_path, "status", "-n", "vision", columns=80)
    assert status.exit_code == 0, status.output
    assert "vnone" not in status.output
    assert "no version (" in status.output
    wide = ferry(server, tmp_path, "status", "-n", "vision", columns=200)
    assert "first install rolled back" in wide.output, wide.output
    assert all(len(line) <= 80 for line in status.output.splitlines()), status.output
    listed = ferry(server, tmp_path, "rollout", "list", columns=80)
    assert all(len(line) <= 80 for line in listed.output.splitlines()), listed.output
    assert f"{rollout_id}" in listed.output and " v1 " in listed.output
    assert (
        "created" not in listed.output
        and "created" in ferry(server, tmp_path, "rollout", "list", columns=200).output
    )


def test_agent_enroll_with_a_used_up_token_prints_the_servers_reason(
    server: tuple[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    token = http.post(
        "/api/v1/enrollment-tokens", json={"namespace": "vision", "name": "one-shot", "max_uses": 1}
    ).json()["token"]
    enroll(http, token, "first-user")
    config = tmp_path / "agent.toml"
    config.write_text('state_dir = "state"\nhardware = "x86_64"\ndevice_id = "second-user"\n')
    agent = Path(sys.executable).with_name("ferry-agent")
    used_up = subprocess.run(
        [str(agent), "--config", str(config), "enroll", "--server", server[0], "--token", token],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert used_up.returncode == 1
    error = json.loads(used_up.stderr)
    assert "refused the device credential" not in error["message"]
    assert (
        "the server refused the enrolment (401): enrolment token 'one-shot' has been used "
        "up" in error["message"]
    )
    bogus = subprocess.run(
        [
            str(agent),
            "--config",
            str(config),
            "enroll",
            "--server",
            server[0],
            "--token",
            "fre_bogus",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert "unknown or revoked enrolment token" in json.loads(bogus.stderr)["message"]


def test_simulate_takes_the_configured_server_and_prints_progress_as_a_line(
    server: tuple[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["FERRY_CONFIG"] = str(config)
    ferry_bin = Path(sys.executable).with_name("ferry")
    subprocess.run(
        [str(ferry_bin), "configure", "--server", server[0], "--token", server[1]],
        env=env,
        check=True,
        capture_output=True,
    )
    token = http.post(
        "/api/v1/enrollment-tokens", json={"namespace": "vision", "name": "sim", "max_uses": None}
    ).json()["token"]
    run = subprocess.run(
        [
            str(ferry_bin),
            "simulate",
            "--enrollment-token",
            token,
            "--devices",
            "3",
            "--prefix",
            "simcfg",
            "--no-mqtt",
            "--run-for",
            "3",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    progress = run.stderr.strip().splitlines()
    assert progress and all(line.startswith("enrolled ") for line in progress), run.stderr
    assert "{" not in run.stderr and "enrolled 3/3" in progress[-1]
    assert "enrolled: 3" in run.stdout


def test_rollout_gates_edits_a_running_rollout_and_says_what_changed(
    server: tuple[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    devices_of(http, "gates", 2)
    rollout_id = create(server, tmp_path, "gates", "--waves", "100", "--bake", "3600")
    edited = ferry(
        server,
        tmp_path,
        "rollout",
        "gates",
        rollout_id,
        "--bake",
        "60",
        "--no-max-failure-pct",
        columns=80,
    )
    assert edited.exit_code == 0, edited.output
    assert " ".join(edited.output.split()) == (
        f"{rollout_id} gates: bake_s 3600 → 60, max_failure_pct 5 → None"
    )
    nothing = ferry(server, tmp_path, "rollout", "gates", rollout_id)
    assert nothing.exit_code == 2 and "give at least one gate" in nothing.output
    assert ferry(server, tmp_path, "rollout", "cancel", rollout_id).exit_code == 0
    ended = ferry(server, tmp_path, "rollout", "gates", rollout_id, "--bake", "1")
    assert ended.exit_code == 1 and "cannot change" in ended.output


def test_rollback_with_a_baseline_says_where_first_installs_go(
    server: tuple[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    fleet = devices_of(http, "base", 2)
    version = add_version(http, b"weights for baseline")
    rollout_id = create_json(server, tmp_path, "base", "--waves", "100", "--bake", "3600")["id"]
    http.post(f"/api/v1/rollouts/{rollout_id}/cancel")
    rollout = ferry(
        server,
        tmp_path,
        "rollout",
        "create",
        f"vision/det@{version}",
        "--selector",
        "batch=base",
        "--waves",
        "100",
        "--bake",
        "3600",
        "--json",
    )
    second = json.loads(rollout.output)["id"]
    for device in fleet:
        report(server, device, "committed", second, version=version)
    rolled = ferry(server, tmp_path, "rollout", "rollback", second, "--baseline", "1", columns=80)
    assert rolled.exit_code == 0, rolled.output
    assert (
        "2 device(s) go back to their previous version (devices without a previous "
        "version go to v1)"
    ) in " ".join(rolled.output.split())


def test_abort_on_sets_a_limit_per_failure_type_and_the_rollout_shows_it(
    server: tuple[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    devices_of(http, "abort", 2)
    created = ferry(
        server, tmp_path, "rollout", "create", "vision/det@1", "--selector", "batch=abort",
        "--waves", "100", "--bake", "3600", "--abort-on", "rolled_back=5",
        "--abort-on", "timed_out=20", columns=80,
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    assert "abort on rolled_back >5%, timed_out >20%" in " ".join(created.output.split())
    assert all(len(line) <= 80 for line in created.output.splitlines()), created.output
    rollout_id = created.output.split()[1]
    gates = http.get(f"/api/v1/rollouts/{rollout_id}").json()["gates"]
    assert (gates["max_rolled_back_pct"], gates["max_timed_out_pct"]) == (5, 20)
    assert gates["max_failed_pct"] is None
    assert ferry(server, tmp_path, "rollout", "cancel", rollout_id).exit_code == 0

    typo = ferry(
        server, tmp_path, "rollout", "create", "vision/det@1", "--selector", "batch=abort",
        "--abort-on", "probe=5",
    )  # fmt: skip
    assert typo.exit_code == 2
    assert (
        "--abort-on 'probe=5': use TYPE=PCT with TYPE one of failed, rolled_back, timed_out"
        in " ".join(typo.output.split())
    )
