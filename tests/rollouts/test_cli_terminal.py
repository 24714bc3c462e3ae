"""What a person sees at a real terminal: the `ferry` process runs on a pseudo-terminal
against a real `ferry server`, and its bytes are played on a VT100 screen (pyte).

On a terminal `rollout wait` and `rollout show --watch` redraw one live view in place
(tests/rollouts/test_cli_operator.py covers the line-per-change output of a pipe), end by
themselves when the rollout ends and exit with the codes scripts read; `status --watch`
runs until Ctrl-C; `pull` draws a progress bar per file.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyte
import pytest

from ferry.protocol.waves import wave_index
from tests.rollouts.cli_harness import FERRY, ferry, publish, server
from tests.rollouts.test_cli_operator import create, create_json, devices_of, report

__all__ = ["server"]

ROWS = 50
GUARD_S = 120  # only so that a broken test fails instead of hanging; never an assertion
CSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
Step = tuple[Callable[[str], bool], Callable[["subprocess.Popen[bytes]"], None]]
BREAK = re.compile(rb"\n|\r|\x1b\[[0-9;]*[ABHJK]")  # a new line, or the cursor moved


@pytest.fixture(scope="module")
def http(server: tuple[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server[0], headers={"Authorization": f"Bearer {server[1]}"}
    ) as client:
        publish(client)
        yield client


@dataclass
class Seen:
    """A finished `ferry` run on a terminal: exit code, the screen, the raw bytes."""

    code: int
    screen: list[str]  # the terminal's rows, right-stripped, trailing blank rows dropped
    raw: bytes

    @property
    def text(self) -> str:
        return "\n".join(self.screen)

    def printed_lines(self) -> list[str]:
        """Every run of text the program wrote on one row, escape codes removed: one longer
        than the terminal is what the terminal wraps."""
        return [CSI.sub(b"", line).decode() for line in BREAK.split(self.raw)]


class Terminal:
    """One `ferry` process on a pseudo-terminal of ``columns`` × `ROWS`."""

    def __init__(self, server: tuple[str, str], tmp_path: Path, columns: int) -> None:
        self.columns = columns
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        for name in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TERM"):
            self.env.pop(name, None)  # the terminal's own size and kind, nothing forced
        self.env.update(
            FERRY_SERVER=server[0],
            FERRY_TOKEN=server[1],
            FERRY_CONFIG=str(tmp_path / "config.toml"),
            TERM="xterm-256color",
        )

    def run(self, *args: str, steps: Sequence[Step] = ()) -> Seen:
        """Run to the end; each step acts once the text on screen so far satisfies its
        condition, in order (devices reporting, Ctrl-C), so nothing depends on timing."""
        master, slave = pty.openpty()
        size = struct.pack("HHHH", ROWS, self.columns, 0, 0)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
        proc = subprocess.Popen(
            [str(FERRY), *args], stdin=slave, stdout=slave, stderr=slave, env=self.env
        )
        os.close(slave)
        raw, pending = b"", list(steps)
        guard = time.monotonic() + GUARD_S
        try:
            while time.monotonic() < guard:
                while pending and pending[0][0](CSI.sub(b"", raw).decode(errors="replace")):
                    pending.pop(0)[1](proc)
                ready, _, _ = select.select([master], [], [], 0.1)
                if not ready:
                    continue
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal has closed it
                    break
                if not chunk:
                    break
                raw += chunk
            else:
                proc.kill()
                pytest.fail(
                    f"`ferry {' '.join(args)}` did not end:\n{raw.decode(errors='replace')}"
                )
            code = proc.wait(timeout=30)
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert pending == [], f"steps never reached:\n{raw.decode(errors='replace')}"
        screen = pyte.Screen(self.columns, ROWS)
        pyte.ByteStream(screen).feed(raw)  # the terminal turned each "\n" into "\r\n" (onlcr)
        rows = [row.rstrip() for row in screen.display]
        while rows and not rows[-1]:
            rows.pop()
        return Seen(code, rows, raw)


@pytest.fixture
def terminal(server: tuple[str, str], tmp_path: Path) -> Terminal:
    return Terminal(server, tmp_path, columns=80)


def _views(seen: Seen, rollout_id: str) -> int:
    """How many times the live view's header was drawn (each redraw draws it again)."""
    return CSI.sub(b"", seen.raw).count(f"{rollout_id} vision/det@1".encode())


def test_wait_on_a_terminal_redraws_one_view_and_exits_0_when_the_rollout_completes(
    server: tuple[str, str], http: httpx.Client, tmp_path: Path, terminal: Terminal
) -> None:
    fleet = devices_of(http, "tty-ok", 4)
    rollout = create_json(server, tmp_path, "tty-ok", "--waves", "50,100")
    rollout_id, seed = rollout["id"], rollout["wave_seed"]
    first = [d for d in fleet if wave_index(seed, d["device_id"], [50, 100]) == 0]

    later = [d for d in fleet if d not in first]

    def commit(group: list[dict[str, Any]]) -> Callable[[object], None]:
        def act(_: object) -> None:
            for device in group:
                report(server, device, "committed", rollout_id)

        return act

    seen = terminal.run(
        "rollout",
        "wait",
        rollout_id,
        "--interval",
        "0.2",
        steps=[
            (lambda text: "state: running" in text, commit(first)),
            (lambda text: "state: running   wave 2/2" in text, commit(later)),
        ],
    )
    assert seen.code == 0, seen.text
    assert _views(seen, rollout_id) >= 3, "drawn again as the rollout moves"
    headers = [row for row in seen.screen if row.startswith(f"{rollout_id} vision/det@1")]
    assert headers == [f"{rollout_id} vision/det@1 → batch=tty-ok   state: completed   wave 2/2"]
    assert "…" not in seen.text, "no header or number cut at 80 columns"
    header = next(row for row in seen.screen if row.startswith(" wave"))
    assert [c.strip() for c in header.split("┃")] == [
        "wave", "%", "pending", "updating", "committed", "failed", "total", "success"
    ]  # fmt: skip
    rows = [[c.strip() for c in row.split("│")] for row in seen.screen if "│" in row]
    assert [(r[0], r[1]) for r in rows] == [("1", "50"), ("▶ 2", "100")]
    assert all(r[-1] == "100.0%" for r in rows if int(r[-2])), seen.text
    assert sum(int(r[4]) for r in rows) == 4, "every device committed"
    assert "gate: status=completed reason=gate passed: 4/4 committed" in seen.text
    assert seen.screen[-1] == f"{rollout_id} completed: 4/4 committed (gate passed: 4/4 committed)"
    assert [line for line in seen.printed_lines() if len(line) > 80] == []
    assert "running wave" not in seen.text, "no progress lines on a terminal: the view"


def test_watch_and_wait_on_a_terminal_end_when_the_rollout_halts_or_time_runs_out(
    server: tuple[str, str], http: httpx.Client, tmp_path: Path, terminal: Terminal
) -> None:
    fleet = devices_of(http, "tty-bad", 2)
    strict = ("--waves", "100", "--max-failures", "0", "--max-failure-pct", "100")
    halted = create(server, tmp_path, "tty-bad", *strict)

    watched = terminal.run(
        "rollout",
        "show",
        halted,
        "--watch",
        "--interval",
        "0.2",
        steps=[
            (
                lambda text: "state: running" in text,
                lambda _: report(server, fleet[0], "failed", halted, error_code="probe_failed"),
            )
        ],
    )
    assert watched.code == 0, watched.text
    assert _views(watched, halted) >= 2
    assert watched.screen[0] == f"{halted} vision/det@1 → batch=tty-bad   state: halted   wave 1/1"
    assert (
        "gate: status=halted reason=failure limit crossed in wave 1: 1 of 2 devices failed"
        in " ".join(watched.text.split())
    )
    assert [line for line in watched.printed_lines() if len(line) > 80] == []

    waited = terminal.run("rollout", "wait", halted, "--interval", "0.2")
    assert waited.code == 3, waited.text
    assert " ".join(waited.screen[-3:]).endswith(
        f"— see `ferry rollout devices {halted} --state failed`"
    )

    wide = Terminal(server, tmp_path, columns=200).run("rollout", "wait", halted)
    header = next(row for row in wide.screen if row.startswith(" wave"))
    assert [c.strip() for c in header.split("┃")] == [
        "wave", "%", "pending", "downloading", "installing", "committed", "failed",
        "rolled_back", "timed_out", "total", "success",
    ]  # fmt: skip
    assert wide.code == 3, "every state has its column on a wide terminal"

    devices_of(http, "tty-slow", 1)
    slow = create(server, tmp_path, "tty-slow", "--waves", "100", "--bake", "3600")
    timed_out = terminal.run("rollout", "wait", slow, "--timeout", "0.5", "--interval", "0.2")
    assert timed_out.code == 124, timed_out.text
    assert f"{slow} is still running after 0.5 s" in " ".join(timed_out.text.split())
    assert ferry(server, tmp_path, "rollout", "cancel", slow).exit_code == 0


def test_status_watch_on_a_terminal_runs_until_ctrl_c(
    http: httpx.Client, terminal: Terminal
) -> None:
    devices_of(http, "tty-status", 1)

    seen = terminal.run(
        "status",
        "-n",
        "vision",
        "--watch",
        "--interval",
        "0.2",
        steps=[
            (
                lambda text: text.count("installed versions") >= 2,  # drawn, then redrawn
                lambda proc: proc.send_signal(signal.SIGINT),  # what Ctrl-C sends
            )
        ],
    )
    assert seen.code == 0, seen.text
    assert seen.screen[0].startswith("devices: ")
    assert sum("installed versions" in row for row in seen.screen) == 1, seen.text
    assert "Traceback" not in seen.text and "KeyboardInterrupt" not in seen.text


def test_pull_on_a_terminal_draws_a_progress_bar_per_file(
    http: httpx.Client, terminal: Terminal, tmp_path: Path
) -> None:
    seen = terminal.run("pull", "vision/det@1", "--dest", str(tmp_path / "det"))
    assert seen.code == 0, seen.text
    [bar] = [row for row in seen.screen if row.startswith("download m.onnx")]
    assert "━" in bar and "10/10 bytes" in bar, seen.text
    assert "verified vision/det@1 into " in " ".join(seen.text.split())
    quiet = terminal.run("pull", "vision/det@1", "--dest", str(tmp_path / "quiet"), "-q")
    assert quiet.code == 0 and not any(r.startswith("download") for r in quiet.screen)
