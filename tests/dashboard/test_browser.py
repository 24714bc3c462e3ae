"""The dashboard in a real browser (Debian's chromium via Playwright) against a real server
process whose fleet is the simulator: pages render without console errors, a device report
changes the rollout page without a reload, an operator's button changes the rollout, a
viewer has no write buttons, and no token ever appears in a URL or the server log.

Screenshots go to tests/artifacts/ (git-ignored); with FERRY_DOCS_SCREENSHOTS=1 they are
also written to docs/img/ for docs/dashboard.md and the README.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dashboard.live import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    DOC_IMAGES,
    LiveServer,
    Simulator,
    wait_until,
)
from tests.support.metrics import parse, value

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="chromium is not installed (apt package chromium)"
    ),
]
DEVICES = 24


@dataclass
class Stack:
    server: LiveServer
    simulator: Simulator
    browser: Any
    tokens: dict[str, str]
    rollout: str = ""
    urls: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def page(self, role: str) -> Any:
        """A new browser context (its own cookies) signed in with ``role``'s token."""
        context = self.browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.on(
            "console",
            lambda m: self.problems.append(f"{m.type}: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("request", lambda r: self.urls.append(r.url))
        page.goto(f"{self.server.base}/ui/login")
        page.fill("#token", self.tokens[role])
        page.click("button[type=submit]")
        page.wait_for_url("**/ui/rollouts")
        return page

    def status(self) -> dict[str, Any]:
        return dict(self.server.api("GET", f"/rollouts/{self.rollout}/status").json())


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("FERRY_DOCS_SCREENSHOTS") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOC_IMAGES / path.name)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    server = LiveServer(tmp_path_factory.mktemp("dashboard-e2e") / "data")
    server.start()
    simulator: Simulator | None = None
    try:
        server.api("POST", "/namespaces", json={"name": "vision"})
        server.api("POST", "/models", json={"namespace": "vision", "name": "det"})
        server.publish("vision", "det", {"accuracy": 0.912, "latency_ms": 14.0})
        token = server.api(
            "POST",
            "/enrollment-tokens",
            json={"namespace": "vision", "name": "sim", "max_uses": None},
        ).json()["token"]
        simulator = Simulator(server, token, DEVICES, fail_rate=0.2)
        simulator.start()
        wait_until(
            lambda: len(server.api("GET", "/devices?limit=1000").json()) == DEVICES,
            "the simulated devices to enrol",
        )
        with playwright_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            tokens = {role: server.token(role) for role in ("operator", "viewer")}
            tokens["admin"] = server.admin_token
            yield Stack(server, simulator, browser, tokens)
            browser.close()
    finally:
        if simulator is not None:
            simulator.stop()
        server.stop()


def _first_rollout(stack: Stack) -> None:
    """v1 to every device, so the second rollout upgrades a fleet that runs something."""
    first = stack.server.api(
        "POST",
        "/rollouts",
        json={
            "namespace": "vision",
            "model": "det",
            "version": "1",
            "waves": [100],
            "min_success_pct": 50,
            "max_failure_pct": 50,
        },
    ).json()["id"]

    def settled() -> bool:
        status = stack.server.api("GET", f"/rollouts/{first}/status").json()
        busy = sum(status["totals"][s] for s in ("pending", "downloading", "installing"))
        return busy == 0 and status["rollout"]["state"] == "completed"

    wait_until(settled, "the first rollout to complete", timeout=120)


def test_an_operator_resumes_a_rollout_and_device_reports_update_the_page_live(
    stack: Stack,
) -> None:
    _first_rollout(stack)
    stack.server.publish("vision", "det", {"accuracy": 0.934, "latency_ms": 12.5})
    stack.server.api("PUT", "/models/vision/det/aliases/champion", json={"version": 2})
    stack.rollout = stack.server.api(
        "POST",
        "/rollouts",
        json={
            "namespace": "vision",
            "model": "det",
            "version": "2",
            "waves": [25, 100],
            "bake_s": 4,
            "min_success_pct": 60,
            "max_failure_pct": 50,
            "start_paused": True,
        },
    ).json()["id"]
    page = stack.page("operator")
    page.goto(f"{stack.server.base}/ui/rollouts/{stack.rollout}")
    assert page.inner_text("[data-field=state]") == "paused"
    page.click("a[data-action=resume]")
    plan = page.inner_text("p.plan")
    assert "devices will be told to install vision/det v2" in plan
    page.click("#confirm")
    page.wait_for_url(f"**/ui/rollouts/{stack.rollout}")
    assert stack.status()["rollout"]["state"] == "running"

    page.evaluate("window.__sameDocument = true")
    page.wait_for_selector("#live[data-updated] [data-count=committed]", timeout=60_000)
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
    wait_until(
        lambda: stack.status()["totals"]["committed"] >= DEVICES // 2,
        "half of the fleet to commit v2",
        timeout=120,
    )
    wait_until(
        lambda: int(page.inner_text("[data-field=committed]")) >= DEVICES // 2,
        "the page to show what the devices reported",
        timeout=30,
    )
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
    shot(page, "rollout")
    page.context.close()


def test_failed_devices_are_one_click_away_with_their_error_codes(stack: Stack) -> None:
    wait_until(
        lambda: any(stack.status()["totals"][s] for s in ("failed", "rolled_back")),
        "a failed device",
        timeout=120,
    )
    page = stack.page("viewer")
    page.goto(f"{stack.server.base}/ui/rollouts/{stack.rollout}")
    page.click("[data-field=failed] a")
    page.wait_for_selector("tr[data-device] code.error-code")
    codes = page.locator("tr[data-device] code.error-code").all_inner_texts()
    assert codes and set(codes) <= {"probe_failed"}
    assert "simulated health probe failed" in page.inner_text("table.devices")
    shot(page, "failed-devices")
    page.context.close()


def test_a_viewer_sees_no_write_buttons(stack: Stack) -> None:
    page = stack.page("viewer")
    page.goto(f"{stack.server.base}/ui/rollouts/{stack.rollout}")
    page.wait_for_selector("#live [data-wave]")
    assert page.locator("[data-action]").count() == 0
    assert page.locator("form[action*='/ui/rollouts/']").count() == 0
    before = len(stack.problems)
    response = page.goto(f"{stack.server.base}/ui/rollouts/{stack.rollout}/confirm/rollback")
    assert response is not None and response.status == 403
    page.wait_for_load_state("load")
    expected = [p for p in stack.problems[before:] if "403" in p]
    assert expected and expected == stack.problems[before:]
    del stack.problems[before:]
    page.goto(f"{stack.server.base}/ui/rollouts/{stack.rollout}")
    shot(page, "rollout-viewer")
    page.context.close()


PAGES = [
    ("rollouts", "/ui/rollouts"),
    ("fleet", "/ui/fleet"),
    ("device", "/ui/devices/sim-00000"),
    ("models", "/ui/models"),
    ("model", "/ui/models/vision/det?a=1&b=2"),
    ("version", "/ui/models/vision/det/versions/2"),
    ("audit", "/ui/audit"),
]


def test_every_page_renders_without_console_errors(stack: Stack) -> None:
    page = stack.page("admin")
    for name, path in PAGES:
        response = page.goto(f"{stack.server.base}{path}")
        assert response is not None and response.status == 200, path
        page.wait_for_load_state("load")
        shot(page, name)
    assert "Chain verified" in page.inner_text("p.chain")
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read the token
    page.context.close()
    assert stack.problems == []


def test_the_token_never_appears_in_a_url_or_the_server_log(stack: Stack) -> None:
    assert stack.urls, "no requests were recorded"
    log = stack.server.log_path.read_text(errors="replace")
    assert '"path": "/ui/login"' in log  # the sign-ins are in the access log ...
    for secret in stack.tokens.values():
        assert not any(secret in url for url in stack.urls)
        assert secret not in log  # ... but never the token


def test_the_real_server_is_ready_with_its_broker_subscription(stack: Stack) -> None:
    ready = httpx.get(f"{stack.server.base}/readyz", timeout=5).json()
    assert ready == {"status": "ready", "checks": {"database": "ok", "blobs": "ok", "mqtt": "ok"}}
    metrics = parse(httpx.get(f"{stack.server.base}/metrics", timeout=5).text)
    assert value(metrics, "ferry_mqtt_connected") == 1
    assert value(metrics, "ferry_status_reports_total", transport="mqtt", outcome="accepted") > 0
    # Counted by the real loops and routes (the wiring, not a test's own callback):
    assert value(metrics, "ferry_rollout_gate_decisions_total", decision="complete") >= 1
    assert value(metrics, "ferry_rollout_gate_decisions_total", decision="advance") >= 1
    assert value(metrics, "ferry_checkin_duration_seconds_count", path="computed") > 0
    assert value(metrics, "ferry_served_bytes_total", kind="full") > 0  # sampled downloads
    assert value(metrics, "ferry_devices", status="online") == DEVICES
