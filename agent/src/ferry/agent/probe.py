"""The health probe: a command or a ``module:function``, run in a child process with a timeout.

Both kinds run in their own process group, so a probe that hangs (or forks
helpers that hang) is killed as a whole, and a probe that crashes cannot take
the agent down with it. The probe sees the new version through its environment:
``FERRY_MODEL_DIR``, ``FERRY_MODEL_VERSION``, ``FERRY_MODEL_NAME``, ``FERRY_SLOT``
and ``FERRY_MODEL_MANIFEST``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ferry.agent.config import ProbeConfig
from ferry.agent.errors import ProbeError, ProbeTimeoutError


@dataclass(frozen=True)
class ProbeTarget:
    """What the probe is checking."""

    slot: str
    model: str
    version: int
    model_dir: Path
    manifest_path: Path


def probe_environment(target: ProbeTarget) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FERRY_MODEL_DIR=str(target.model_dir),
        FERRY_MODEL_VERSION=str(target.version),
        FERRY_MODEL_NAME=target.model,
        FERRY_SLOT=target.slot,
        FERRY_MODEL_MANIFEST=str(target.manifest_path),
    )
    return env


def _argv(config: ProbeConfig) -> list[str]:
    if config.entry_point is not None:
        return [sys.executable, "-m", "ferry.agent.probe_runner", config.entry_point]
    return list(config.command)


def _tail(output: bytes, limit: int) -> str:
    """The end of the output is where the error usually is."""
    text = output.decode("utf-8", errors="replace")
    return text if len(text) <= limit else "…" + text[-limit:]


def run_probe(config: ProbeConfig, target: ProbeTarget) -> str:
    """Run the probe; returns its output, raises ProbeError / ProbeTimeoutError on failure."""
    if not config.configured:
        return ""
    try:
        child = subprocess.Popen(
            _argv(config),
            env=probe_environment(target),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=target.model_dir,
        )
    except OSError as exc:
        raise ProbeError(f"probe could not start: {exc}") from exc
    try:
        output, _ = child.communicate(timeout=config.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        output, _ = child.communicate()
        raise ProbeTimeoutError(
            f"probe timed out after {config.timeout_s}s: {_tail(output, config.output_limit)}"
        ) from None
    if child.returncode != 0:
        raise ProbeError(f"probe exited {child.returncode}: {_tail(output, config.output_limit)}")
    return _tail(output, config.output_limit)
