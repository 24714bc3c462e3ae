"""The rollout page: bars of states per wave, the gate, the halt reason, role-aware actions,
confirmations that name what happens and to how many devices, and the live fragment."""

from __future__ import annotations

import asyncio
import re

from ferry.server.dashboard import routes
from ferry.server.dashboard.rollout_view import segments
from tests.dashboard.helpers import browser, csrf_of, first_agent, live_rollout, secret_of
from tests.fleet.harness import Fleet
from tests.rollouts.helpers import by_wave, commit, fail

WRITE_BUTTONS = re.compile(r'data-action="|/confirm/|<form method="post" action="/ui/rollouts')


def test_each_wave_is_a_bar_of_its_states_with_the_gate_numbers(fleet: Fleet) -> None:
    rollout, agents = live_rollout(fleet, devices=6, bake_s=600)
    commit(fleet, [first_agent(rollout, agents)], 1, rollout["id"])
    html = browser(fleet, fleet.token("viewer")).get(f"/ui/rollouts/{rollout['id']}").text
    assert 'data-wave="1"' in html and 'data-wave="2"' in html
    assert 'class="f-committed"' in html
    assert "bake left <strong" in html and "600 s" in html
    assert re.search(r"success <strong>[\d.]+ %</strong> \(needs 100 %\)", html)


def test_bar_segments_are_proportional_and_skip_empty_states() -> None:
    bar = segments({"committed": 3, "failed": 1, "pending": 0}, 4, width=400)
    assert [(s.state, s.x, s.width, s.count) for s in bar] == [
        ("committed", 0.0, 300.0, 3),
        ("failed", 300.0, 100.0, 1),
    ]
    assert segments({}, 0) == []


def test_a_halted_rollout_shows_its_reason_and_failed_devices_one_click_away(fleet: Fleet) -> None:
    rollout, agents = live_rollout(fleet, devices=4, waves=[100], max_failures=0, max_retries=0)
    fail(fleet, agents[:1], 1, rollout["id"])
    fleet.tick()
    html = browser(fleet, fleet.token("viewer")).get(f"/ui/rollouts/{rollout['id']}").text
    assert "Halted: failure limit crossed in wave 1" in html
    assert f'href="/ui/rollouts/{rollout["id"]}/devices?state=failed">1</a>' in html


def test_a_viewer_sees_no_write_buttons_and_a_forged_post_is_refused(fleet: Fleet) -> None:
    rollout, _ = live_rollout(fleet)
    client = browser(fleet, fleet.token("viewer"))
    html = client.get(f"/ui/rollouts/{rollout['id']}").text
    assert not WRITE_BUTTONS.search(html)
    assert client.get(f"/ui/rollouts/{rollout['id']}/confirm/pause").status_code == 403
    r = client.post(
        f"/ui/rollouts/{rollout['id']}/pause", data={"csrf": csrf_of(html)}, follow_redirects=False
    )
    assert r.status_code == 403
    assert fleet.status(rollout["id"])["rollout"]["state"] == "running"


def test_an_operator_of_another_namespace_does_not_see_the_rollout(fleet: Fleet) -> None:
    fleet.namespace("audio")
    rollout, _ = live_rollout(fleet)
    client = browser(fleet, fleet.token("operator", ["audio"]))
    assert client.get(f"/ui/rollouts/{rollout['id']}").status_code == 404


def test_an_operator_sees_only_the_legal_actions(fleet: Fleet) -> None:
    rollout, _ = live_rollout(fleet)
    html = browser(fleet, fleet.token("operator")).get(f"/ui/rollouts/{rollout['id']}").text
    shown = set(re.findall(r'data-action="(\w+)"', html))
    assert shown == {"pause", "advance", "cancel", "rollback"}


def test_the_confirmation_names_the_action_and_the_number_of_devices(fleet: Fleet) -> None:
    # Waves hash a per-run manifest digest: 16 devices leave a wave empty once in 30,000 runs.
    rollout, agents = live_rollout(fleet, devices=16, waves=[50, 100])
    waves = by_wave(rollout, agents)
    commit(fleet, waves[0][:1], 1, rollout["id"])
    client = browser(fleet, fleet.token("operator"))
    advance = client.get(f"/ui/rollouts/{rollout['id']}/confirm/advance").text
    assert f'data-devices="{len(waves.get(1, []))}"' in advance
    assert f"{len(waves.get(1, []))} more devices will be told to install vision/det v1" in advance
    rollback = client.get(f"/ui/rollouts/{rollout['id']}/confirm/rollback").text
    assert "1 devices that took it are told to return to their previous version" in rollback


def test_an_operator_button_changes_the_rollout(fleet: Fleet) -> None:
    rollout, _ = live_rollout(fleet)
    client = browser(fleet, fleet.token("operator"))
    page = client.get(f"/ui/rollouts/{rollout['id']}/confirm/pause").text
    r = client.post(
        f"/ui/rollouts/{rollout['id']}/pause", data={"csrf": csrf_of(page)}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == f"/ui/rollouts/{rollout['id']}"
    assert fleet.status(rollout["id"])["rollout"]["state"] == "paused"
    audit = fleet.client.get("/api/v1/audit?limit=1000", headers=fleet.admin).json()
    paused = [e for e in audit if e["action"] == "rollout.paused"]
    assert paused and paused[-1]["actor"].startswith("operator-")


def test_the_live_fragment_changes_when_a_device_reports(fleet: Fleet) -> None:
    rollout, agents = live_rollout(fleet, devices=4)
    ctx, secret = fleet.app.state.ctx, secret_of(fleet.admin)
    before = routes.live_fragment(ctx, fleet.app, secret, rollout["id"])
    fleet.report(
        first_agent(rollout, agents), "downloading", to_version=1, rollout_id=rollout["id"]
    )
    after = routes.live_fragment(ctx, fleet.app, secret, rollout["id"])
    assert before is not None and after is not None
    assert 'data-count="downloading"' not in before
    assert 'data-count="downloading">downloading 1<' in after


def test_the_live_fragment_stops_for_a_revoked_token(fleet: Fleet) -> None:
    rollout, _ = live_rollout(fleet)
    assert routes.live_fragment(fleet.app.state.ctx, fleet.app, "fry_gone", rollout["id"]) is None


def test_a_multi_line_fragment_is_one_event() -> None:
    assert routes.sse("live", "<a>\n<b>") == "event: live\ndata: <a>\ndata: <b>\n\n"


def test_the_event_stream_sends_the_fragment_then_stops_on_disconnect(fleet: Fleet) -> None:
    rollout, _ = live_rollout(fleet)

    class Request:
        app = fleet.app
        calls = 0

        async def is_disconnected(self) -> bool:
            self.calls += 1
            return self.calls > 1

    async def collect() -> list[str]:
        stream = routes.live_events(
            Request(),
            fleet.app.state.ctx,  # type: ignore[arg-type]
            secret_of(fleet.admin),
            rollout["id"],
        )
        return [chunk async for chunk in stream]

    chunks = asyncio.run(collect())
    assert chunks[0].startswith("retry:")
    assert chunks[1].startswith("event: live\n") and 'data-wave="1"' in chunks[1]
    assert len(chunks) == 2
