"""Fleet, device, models, version, audit and failed-device pages, and what a role changes."""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlmodel import Session, select

from ferry.protocol.signing import parse_envelope
from ferry.protocol.timefmt import format_time
from ferry.server.audit.tables import AuditEntry
from tests.dashboard.helpers import browser, first_agent, live_rollout
from tests.fleet.harness import Fleet, report_doc
from tests.rollouts.helpers import commit


def _report_with_detail(fleet: Fleet, agent: object, detail: str, **kw: object) -> None:
    doc = report_doc(agent.device_id, at=format_time(fleet.clock.now), **kw)  # type: ignore[attr-defined, arg-type]
    doc["detail"] = detail
    r = fleet.client.post("/api/v1/device/status", json={"reports": [doc]}, headers=agent.headers)  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text


def test_the_failed_devices_page_lists_error_codes_and_probe_output(fleet: Fleet) -> None:
    rollout, agents = live_rollout(fleet, devices=4, max_retries=0)
    bad = first_agent(rollout, agents)
    _report_with_detail(
        fleet,
        bad,
        "probe: onnxruntime: invalid output shape [1, 3]",
        state="rolled_back",
        to_version=1,
        rollout_id=rollout["id"],
        error_code="probe_failed",
    )
    html = (
        browser(fleet, fleet.token("viewer"))
        .get(f"/ui/rollouts/{rollout['id']}/devices?state=failed")
        .text
    )
    row = re.search(rf'<tr data-device="{bad.device_id}">.*?</tr>', html, re.DOTALL)
    assert row, html
    assert "probe_failed" in row.group(0) and "invalid output shape [1, 3]" in row.group(0)
    assert html.count("<tr data-device=") == 1


def test_the_fleet_page_counts_online_and_charts_installed_versions(fleet: Fleet) -> None:
    rollout, agents = live_rollout(fleet, devices=4, waves=[100])
    fleet.clock.advance(600)  # enrolment counts as seen; ten minutes later only reporters are
    commit(fleet, agents[:3], 1, rollout["id"])
    fleet.flush_last_seen()  # reports note sightings; the server writes them every 2 s
    html = browser(fleet, fleet.token("viewer")).get("/ui/fleet").text
    assert '<strong data-field="devices">4</strong>' in html
    assert '<strong data-field="online">3</strong>' in html
    assert '<strong data-field="offline">1</strong>' in html
    assert 'data-model="vision/det#main"' in html
    assert re.search(r'<span data-version="1">.*?v1: 3</span>', html)
    assert '<strong data-slot-state="committed">3</strong>' in html


def test_fleet_filters_by_hardware_tag_namespace_and_id(fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    fleet.enroll(token, "cam-eu-1", hardware="jetson-orin", tags={"region": "eu"})
    fleet.enroll(token, "cam-us-1", hardware="x86_64", tags={"region": "us"})
    fleet.enroll(token, "gw-eu-2", hardware="x86_64", tags={"region": "eu"})
    client = browser(fleet, fleet.token("viewer"))

    def shown(query: str) -> set[str]:
        return set(re.findall(r'<tr data-device="([^"]+)"', client.get(f"/ui/fleet?{query}").text))

    assert shown("hardware=jetson-orin") == {"cam-eu-1"}
    assert shown("tag=region%3Deu") == {"cam-eu-1", "gw-eu-2"}
    assert shown("q=cam") == {"cam-eu-1", "cam-us-1"}
    assert shown("namespace=vision&tag=region%3Dus") == {"cam-us-1"}


def test_a_namespace_scoped_viewer_sees_only_its_devices(fleet: Fleet) -> None:
    fleet.namespace("audio")
    fleet.enroll(fleet.enrollment_token(), "cam-1")
    fleet.enroll(fleet.enrollment_token("audio"), "mic-1")
    client = browser(fleet, fleet.token("viewer", ["audio"]))
    html = client.get("/ui/fleet").text
    assert 'data-device="mic-1"' in html and 'data-device="cam-1"' not in html
    assert client.get("/ui/devices/cam-1").status_code == 404
    assert client.get("/ui/fleet?namespace=vision").status_code == 403


def test_the_device_page_shows_slots_history_and_the_last_error_with_probe_output(
    fleet: Fleet,
) -> None:
    rollout, agents = live_rollout(fleet, devices=2)
    agent = first_agent(rollout, agents)
    fleet.report(agent, "downloading", to_version=1, rollout_id=rollout["id"])
    _report_with_detail(
        fleet,
        agent,
        "probe exited 3: accuracy 0.41 < 0.80",
        state="rolled_back",
        to_version=1,
        rollout_id=rollout["id"],
        error_code="probe_failed",
    )
    html = browser(fleet, fleet.token("viewer")).get(f"/ui/devices/{agent.device_id}").text
    last = re.search(r'<section class="card last-error">.*?</section>', html, re.DOTALL)
    assert last and "probe_failed" in last.group(0)
    assert "probe exited 3: accuracy 0.41 &lt; 0.80" in last.group(0)
    assert html.count("st-downloading") >= 1 and html.count("st-rolled_back") >= 2


def test_the_models_pages_show_stages_aliases_metrics_manifest_key_and_devices(
    fleet: Fleet,
) -> None:
    rollout, agents = live_rollout(fleet, devices=2, waves=[100])
    commit(fleet, agents, 1, rollout["id"])
    fleet.version(stage="Staging")
    assert (
        fleet.client.put(
            "/api/v1/models/vision/det/aliases/champion", json={"version": 1}, headers=fleet.admin
        ).status_code
        == 200
    )
    client = browser(fleet, fleet.token("viewer"))
    assert 'href="/ui/models/vision/det"' in client.get("/ui/models").text
    page = client.get("/ui/models/vision/det").text
    assert re.search(
        r'<tr data-version="1">.*?Production.*?champion.*?data-running="2"', page, re.DOTALL
    )
    assert re.search(r'<tr data-version="2">.*?Staging.*?data-running="0"', page, re.DOTALL)
    assert re.search(r"<td>1</td><td>Staging → Production</td><td>[^<]*</td>", page)
    version = client.get("/ui/models/vision/det/versions/1").text
    envelope = fleet.client.get(
        "/api/v1/models/vision/det/versions/1/manifest", headers=fleet.admin
    ).content
    keyid = parse_envelope(envelope).signatures[0].keyid
    assert f'<code class="keyid">{keyid}</code>' in version
    assert "Running on 2 devices" in version and "dev-0000" in version


def test_two_versions_metrics_side_by_side(fleet: Fleet) -> None:
    for accuracy in (0.81, 0.86):
        data = secrets.token_bytes(16)
        sha = hashlib.sha256(data).hexdigest()
        fleet.client.put(f"/api/v1/blobs/{sha}", content=data, headers=fleet.admin)
        r = fleet.client.post(
            "/api/v1/models/vision/det/versions",
            headers=fleet.admin,
            json={
                "files": [{"path": "m.onnx", "sha256": sha, "size": 16}],
                "format": "onnx",
                "flavor": "onnxruntime",
                "signature": {},
                "hardware": [],
                "metadata": {
                    "created_by": "ci",
                    "run_id": f"run-{accuracy}",
                    "git_commit": "c",
                    "metrics": {"accuracy": accuracy},
                },
            },
        )
        assert r.status_code == 201, r.text
    html = browser(fleet, fleet.admin).get("/ui/models/vision/det?a=1&b=2").text
    row = re.search(r'<tr data-metric="accuracy">(.*?)</tr>', html, re.DOTALL)
    assert row and "0.81" in row.group(1) and "0.86" in row.group(1) and "0.05" in row.group(1)
    assert "run-0.81" in html and "run-0.86" in html


def test_the_audit_page_searches_and_shows_the_chain_verified(fleet: Fleet) -> None:
    live_rollout(fleet)
    client = browser(fleet, fleet.admin)
    html = client.get("/ui/audit?q=rollout.").text
    assert 'data-chain="ok"' in html
    actions = re.findall(
        r'<tr data-entry="\d+"><td>\d+</td><td>[^<]*</td><td>[^<]*</td>'
        r"<td>([^<]*)</td>",
        html,
    )
    assert actions and all("rollout." in a for a in actions)


def test_a_tampered_audit_entry_shows_the_chain_broken(fleet: Fleet) -> None:
    live_rollout(fleet)
    with Session(fleet.app.state.ctx.engine) as session:
        entry = session.exec(select(AuditEntry).where(AuditEntry.id == 2)).one()
        entry.actor = "mallory"
        session.add(entry)
        session.commit()
    html = browser(fleet, fleet.admin).get("/ui/audit").text
    assert 'data-chain="broken"' in html and "at entry 2" in html


def test_only_an_admin_reads_the_audit_page(fleet: Fleet) -> None:
    r = browser(fleet, fleet.token("operator")).get("/ui/audit")
    assert r.status_code == 403 and "data-entry" not in r.text and "for admins" in r.text


def test_device_supplied_text_is_escaped_on_pages_and_in_the_live_fragment(fleet: Fleet) -> None:
    """A device controls its report's detail and error code: it must not inject markup."""
    from ferry.server.dashboard import routes

    rollout, agents = live_rollout(fleet, devices=2, max_retries=0)
    agent = first_agent(rollout, agents)
    attack = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    _report_with_detail(
        fleet,
        agent,
        attack,
        state="rolled_back",
        to_version=1,
        rollout_id=rollout["id"],
        error_code="probe_failed",
    )
    client = browser(fleet, fleet.admin)
    pages = [
        client.get(f"/ui/devices/{agent.device_id}").text,
        client.get(f"/ui/rollouts/{rollout['id']}/devices?state=failed").text,
        routes.live_fragment(
            fleet.app.state.ctx, fleet.app, client.cookies["ferry_session"], rollout["id"]
        )
        or "",
    ]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0] + pages[1]
    for html in pages:
        assert "<script>alert" not in html and "<img src=x" not in html
