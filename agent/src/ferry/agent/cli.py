"""``ferry-agent``: enroll, run, status, rollback (argparse only: nothing heavy on the device)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence

from ferry.agent.config import AgentConfig, load_config
from ferry.agent.errors import AgentError
from ferry.agent.log import setup_logging

DEFAULT_CONFIG = "/etc/ferry/agent.toml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry-agent", description="Ferry device agent")
    parser.add_argument(
        "--config",
        default=os.environ.get("FERRY_AGENT_CONFIG", DEFAULT_CONFIG),
        help=f"TOML config file (default: $FERRY_AGENT_CONFIG or {DEFAULT_CONFIG})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    enroll = commands.add_parser(
        "enroll", help="register this device and pin the server's root key"
    )
    enroll.add_argument(
        "--server", required=True, help="server URL, e.g. https://ferry.example.com"
    )
    enroll.add_argument("--token", required=True, help="enrolment token from the operator")
    enroll.add_argument(
        "--root-keyid", action="append", default=None, help="expected root key id (repeatable)"
    )
    commands.add_parser("run", help="run the daemon")
    status = commands.add_parser("status", help="print what is installed, staged and pending")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    rollback = commands.add_parser("rollback", help="switch a slot back to its previous version")
    rollback.add_argument("--slot", default="main")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        setup_logging(config.log_level)
        return COMMANDS[args.command](config, args)
    except AgentError as exc:
        print(json.dumps({"error": exc.code, "message": str(exc)}), file=sys.stderr)
        return 2 if exc.code == "config_invalid" else 1


def _enroll(config: AgentConfig, args: argparse.Namespace) -> int:
    from ferry.agent.enroll import enroll

    roots = set(args.root_keyid) if args.root_keyid else None
    identity = enroll(config, args.server, args.token, roots)
    print(json.dumps({"device_id": identity.device_id, "groups": list(identity.groups)}))
    return 0


def _run(config: AgentConfig, args: argparse.Namespace) -> int:
    """Run the daemon in a worker thread; the main thread only turns signals into a stop.

    A signal handler must not touch the daemon's ``threading.Event`` objects: it may
    interrupt the main thread while that thread holds the event's internal lock,
    and setting it from the handler would then deadlock.
    """
    from ferry.agent.daemon import Agent

    agent = Agent(config)
    requested: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: requested.append(number))
    worker = threading.Thread(target=agent.run_forever, name="ferry-daemon")
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
        if requested:
            agent.stop()
            worker.join()
    return 0


def _status(config: AgentConfig, args: argparse.Namespace) -> int:
    from ferry.agent.daemon import agent_status
    from ferry.agent.identity import DeviceFiles
    from ferry.agent.reports import ReportQueue

    files = DeviceFiles(config.state_dir)
    reports = ReportQueue(config.state_dir / "reports", config.report.max_queued)
    status = agent_status(config, files.load_identity(), files.load_trust(), reports)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print(f"device {status['device_id']}  server {status['server']}")
    print(
        f"keyring v{status['keyring_version']}  desired-state sequence {status['desired_state_sequence']}"
    )
    print(f"pending reports: {status['pending_reports']}")
    for name, slot in status["slots"].items():
        current = slot["current"]
        running = f"{current['model']} v{current['version']}" if current else "nothing"
        previous = f"v{slot['previous']['version']}" if slot["previous"] else "none"
        print(f"slot {name}: running {running}, previous {previous}, state {slot['state']}")
        if slot["update"]:
            update = slot["update"]
            print(
                f"  pending update to v{update.get('to_version')}: {update.get('bytes_downloaded', 0)} bytes"
            )
        if slot["last"]:
            last = slot["last"]
            print(
                f"  last update: {last['state']} v{last.get('to_version')} {last.get('error_code') or ''}"
            )
    return 0


def _rollback(config: AgentConfig, args: argparse.Namespace) -> int:
    from ferry.agent.daemon import Agent

    agent = Agent(config)
    try:
        name = agent.rollback(args.slot)
        agent.sender.flush()
    finally:
        agent.api.close()
    print(json.dumps({"slot": args.slot, "current": name}))
    return 0


COMMANDS = {"enroll": _enroll, "run": _run, "status": _status, "rollback": _rollback}

if __name__ == "__main__":
    sys.exit(main())
