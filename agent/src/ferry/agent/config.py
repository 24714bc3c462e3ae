"""The agent's TOML config, validated on start: every bad key is named in the error.

Unknown keys are refused too (a typo such as ``intervall_s`` must not silently
fall back to a default on a device nobody can log into).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.agent.errors import ConfigError

_TAG = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class ServerConfig:
    """Overrides for what ``enroll`` stored; the URL normally comes from enrolment."""

    url: str | None = None
    ca_file: str | None = None
    timeout_s: float = 30.0
    max_document_bytes: int = 1 << 20


@dataclass(frozen=True)
class PollConfig:
    """HTTP polling of the desired state, and the backoff after a failure."""

    interval_s: float | None = None  # None: the interval the server gave at enrolment
    jitter: float = 0.2
    backoff_min_s: float = 1.0
    backoff_max_s: float = 300.0


@dataclass(frozen=True)
class MqttConfig:
    """Push notices and status reports over MQTT (the broker comes from enrolment)."""

    enabled: bool = True
    url: str | None = None
    keepalive_s: int = 60
    publish_timeout_s: float = 10.0


@dataclass(frozen=True)
class InstallConfig:
    """How many versions stay on disk and how much space to leave free."""

    keep_versions: int = 2
    reserve_bytes: int = 0
    chunk_bytes: int = 1 << 20
    max_resumes: int = 3
    use_deltas: bool = True


@dataclass(frozen=True)
class DownloadConfig:
    """How slow a transfer may be before it is abandoned (slow-retrieval guard, ``download_timeout``).

    Each blob or delta request must finish within ``deadline_grace_s`` plus the bytes it
    still has to bring divided by ``min_rate_bytes_s``, and must bring at least
    ``min_rate_bytes_s × rate_window_s`` bytes in every window of ``rate_window_s``.
    """

    min_rate_bytes_s: int = 1024
    rate_window_s: float = 60.0
    deadline_grace_s: float = 60.0


@dataclass(frozen=True)
class ProbeConfig:
    """The health check run against a new version before it is committed."""

    command: tuple[str, ...] = ()
    entry_point: str | None = None
    timeout_s: float = 60.0
    output_limit: int = 2000

    @property
    def configured(self) -> bool:
        return bool(self.command) or self.entry_point is not None


@dataclass(frozen=True)
class ReportConfig:
    """The on-disk queue of status reports."""

    max_queued: int = 10000
    batch: int = 100
    retry_s: float = 5.0


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``ferry-agent`` reads from its TOML file."""

    state_dir: Path
    models_dir: Path
    hardware: str
    device_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    log_level: str = "info"
    server: ServerConfig = ServerConfig()
    poll: PollConfig = PollConfig()
    mqtt: MqttConfig = MqttConfig()
    install: InstallConfig = InstallConfig()
    download: DownloadConfig = DownloadConfig()
    probe: ProbeConfig = ProbeConfig()
    report: ReportConfig = ReportConfig()


class _Section:
    """Reads one table, naming the full key (``probe.timeout_s``) in every error."""

    def __init__(self, data: Any, prefix: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{prefix or 'config'}: expected a table")
        self.data, self.prefix, self.seen = data, prefix, set[str]()

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def get(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        return self.data.get(key, default)

    def text(self, key: str, default: str | None = None, required: bool = False) -> Any:
        value = self.get(key, default)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config key '{self.name(key)}' must be a non-empty string")
        return value

    def number(self, key: str, default: Any, minimum: float = 0, integer: bool = False) -> Any:
        value = self.get(key, default)
        if value is None:
            return None
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
            kind = "an integer" if integer else "a number"
            raise ConfigError(
                f"config key '{self.name(key)}' must be {kind} ≥ {minimum}, got {value!r}"
            )
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{self.name(key)}' must be true or false")
        return value

    def table(self, key: str) -> _Section:
        self.seen.add(key)
        return _Section(self.data.get(key, {}), self.name(key))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(f"unknown config key '{self.name(unknown[0])}'")


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate ``path``; raises ConfigError naming the first bad key."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return parse_config(data, base=Path(path).resolve().parent)


def parse_config(data: dict[str, Any], base: Path) -> AgentConfig:
    """Validate a parsed TOML document; relative paths are relative to the file."""
    top = _Section(data, "")
    state_dir = base / top.text("state_dir", required=True)
    models_dir = top.text("models_dir")
    config = AgentConfig(
        state_dir=state_dir,
        models_dir=base / models_dir if models_dir else state_dir / "models",
        hardware=top.text("hardware", required=True),
        device_id=_device_id(top),
        tags=_tags(top),
        log_level=_log_level(top),
        server=_server(top.table("server")),
        poll=_poll(top.table("poll")),
        mqtt=_mqtt(top.table("mqtt")),
        install=_install(top.table("install")),
        download=_download(top.table("download")),
        probe=_probe(top.table("probe")),
        report=_report(top.table("report")),
    )
    top.done()
    return config


def _device_id(top: _Section) -> str | None:
    value: str | None = top.text("device_id")
    if value is not None and not _TAG.match(value):
        raise ConfigError("config key 'device_id' may hold only letters, digits and . _ : -")
    return value


def _tags(top: _Section) -> dict[str, str]:
    section = top.table("tags")
    for key in section.data:
        value = section.text(key, required=True)
        if not _TAG.match(key) or not _TAG.match(value):
            raise ConfigError(
                f"config key '{section.name(key)}': tags use letters, digits and . _ : -"
            )
    section.done()
    return dict(section.data)


def _log_level(top: _Section) -> str:
    level: str = top.text("log_level", "info")
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("config key 'log_level' must be one of debug, info, warning, error")
    return level


def _server(s: _Section) -> ServerConfig:
    url = s.text("url")
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError("config key 'server.url' must start with http:// or https://")
    config = ServerConfig(
        url=url,
        ca_file=s.text("ca_file"),
        timeout_s=s.number("timeout_s", 30.0, minimum=0.1),
        max_document_bytes=s.number("max_document_bytes", 1 << 20, minimum=1024, integer=True),
    )
    s.done()
    return config


def _poll(s: _Section) -> PollConfig:
    config = PollConfig(
        interval_s=s.number("interval_s", None, minimum=0.05),
        jitter=s.number("jitter", 0.2),
        backoff_min_s=s.number("backoff_min_s", 1.0, minimum=0.01),
        backoff_max_s=s.number("backoff_max_s", 300.0, minimum=0.01),
    )
    if config.jitter > 1:
        raise ConfigError("config key 'poll.jitter' must be between 0 and 1")
    if config.backoff_max_s < config.backoff_min_s:
        raise ConfigError("config key 'poll.backoff_max_s' must be ≥ poll.backoff_min_s")
    s.done()
    return config


def _mqtt(s: _Section) -> MqttConfig:
    url = s.text("url")
    if url is not None and not url.startswith(("mqtt://", "mqtts://")):
        raise ConfigError("config key 'mqtt.url' must start with mqtt:// or mqtts://")
    config = MqttConfig(
        enabled=s.bool("enabled", True),
        url=url,
        keepalive_s=s.number("keepalive_s", 60, minimum=5, integer=True),
        publish_timeout_s=s.number("publish_timeout_s", 10.0, minimum=0.1),
    )
    s.done()
    return config


def _install(s: _Section) -> InstallConfig:
    config = InstallConfig(
        keep_versions=s.number("keep_versions", 2, minimum=2, integer=True),
        reserve_bytes=s.number("reserve_bytes", 0, integer=True),
        chunk_bytes=s.number("chunk_bytes", 1 << 20, minimum=4096, integer=True),
        max_resumes=s.number("max_resumes", 3, minimum=1, integer=True),
        use_deltas=s.bool("use_deltas", True),
    )
    s.done()
    return config


def _download(s: _Section) -> DownloadConfig:
    config = DownloadConfig(
        min_rate_bytes_s=s.number("min_rate_bytes_s", 1024, minimum=1, integer=True),
        rate_window_s=s.number("rate_window_s", 60.0, minimum=1),
        deadline_grace_s=s.number("deadline_grace_s", 60.0),
    )
    s.done()
    return config


def _probe(s: _Section) -> ProbeConfig:
    command = s.get("command", [])
    if isinstance(command, str):
        command = shlex.split(command)
    if not isinstance(command, list) or not all(isinstance(arg, str) and arg for arg in command):
        raise ConfigError("config key 'probe.command' must be a string or a list of strings")
    entry_point = s.text("entry_point")
    if entry_point is not None and not _ENTRY_POINT.match(entry_point):
        raise ConfigError("config key 'probe.entry_point' must look like 'package.module:function'")
    if command and entry_point:
        raise ConfigError(
            "config key 'probe.entry_point': set either probe.command or probe.entry_point"
        )
    config = ProbeConfig(
        command=tuple(command),
        entry_point=entry_point,
        timeout_s=s.number("timeout_s", 60.0, minimum=0.1),
        output_limit=s.number("output_limit", 2000, minimum=100, integer=True),
    )
    s.done()
    return config


def _report(s: _Section) -> ReportConfig:
    config = ReportConfig(
        max_queued=s.number("max_queued", 10000, minimum=10, integer=True),
        batch=s.number("batch", 100, minimum=1, integer=True),
        retry_s=s.number("retry_s", 5.0, minimum=0.01),
    )
    if config.batch > 500:
        raise ConfigError("config key 'report.batch' must be at most 500 (the server's limit)")
    s.done()
    return config
