"""`ferry devices / enrollment-token / rollout / status` and the SDK against a real
`ferry server` process whose own rollout engine ticks every 0.2 s."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from ferry.client import ConflictError, FerryClient, MemoryTrustStore
from tests.fleet.harness import report_doc
from tests.rollouts.cli_harness import enroll, ferry, publish, server

__all__ = ["server"]


def test_operator_drives_a_rollout_from_the_terminal(
    server: tuple[str, str], tmp_path: Path
) -> None:
    url, admin = server
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"})
    publish(http)
    result = ferry(
        server,
        tmp_path,
        "enrollment-token",
        "create",
        "vision",
        "line-3",
        "--max-uses",
        "3",
        "--tag",
        "region=eu",
        "--json",
    )
    assert result.exit_code == 0, result.output
    token = json.loads(result.output)["token"]
    devices = [enroll(http, token, f"cam-{i}") for i in range(3)]
    assert devices[0]["groups"] == ["all", "hw:x86_64", "region:eu", "site:lyon"]

    result = ferry(
        server,
        tmp_path,
        "rollout",
        "create",
        "vision/det@1",
        "--selector",
        "region=eu",
        "--waves",
        "100",
        "--json",
    )
    assert result.exit_code == 0, result.output
    rollout_id = json.loads(result.output)["id"]
    for device in devices:
        doc = report_doc(
            device["device_id"],
            "committed",
            to_version=1,
            rollout_id=rollout_id,
            at="2026-11-25T03:00:00Z",
        )
        r = http.post(
            "/api/v1/device/status",
            json={"reports": [doc]},
            headers={"Authorization": f"Bearer {device['credential']}"},
        )
        assert r.status_code == 200, r.text

    with FerryClient(url, admin, trust=MemoryTrustStore()) as sdk:
        deadline = time.monotonic() + 20
        while sdk.get_rollout(rollout_id).state != "completed" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sdk.get_rollout(rollout_id).state == "completed"
        with pytest.raises(ConflictError):
            sdk.rollout_action(rollout_id, "pause")
        assert sdk.fleet_status("vision")["models"][0]["versions"] == {"1": 3}

    shown = ferry(server, tmp_path, "rollout", "show", rollout_id)
    assert shown.exit_code == 0 and "completed" in shown.output and "100.0%" in shown.output
    status = ferry(server, tmp_path, "status", "-n", "vision")
    assert status.exit_code == 0 and "v1: 3" in status.output, status.output
    listed = ferry(server, tmp_path, "rollout", "list", "--json")
    assert [r["id"] for r in json.loads(listed.output)] == [rollout_id]

    assert ferry(server, tmp_path, "devices", "tag", "cam-0", "channel=canary").exit_code == 0
    assert ferry(server, tmp_path, "devices", "untag", "cam-0", "site").exit_code == 0
    shown = json.loads(ferry(server, tmp_path, "devices", "show", "cam-0", "--json").output)
    assert shown["tags"] == {"channel": "canary", "hw": "x86_64", "region": "eu"}
    assert [h["state"] for h in shown["history"]] == ["committed"]
    assert ferry(server, tmp_path, "devices", "revoke", "cam-0").exit_code == 0
    listed = ferry(server, tmp_path, "devices", "list", "-n", "vision", "--json")
    assert [d["id"] for d in json.loads(listed.output)] == ["cam-1", "cam-2"]

    refused = ferry(server, tmp_path, "rollout", "pause", rollout_id)
    assert refused.exit_code == 1 and "cannot become paused" in refused.output
    bad = ferry(server, tmp_path, "rollout", "create", "vision/det@1", "--waves", "50,x")
    assert bad.exit_code == 2 and "--waves" in bad.output
