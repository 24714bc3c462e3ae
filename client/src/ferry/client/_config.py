"""The client config file: server URL, token and pinned root keys.

Location: ``$FERRY_CONFIG``, else ``$XDG_CONFIG_HOME/ferry/config.toml``, else
``~/.config/ferry/config.toml``. ``FERRY_SERVER`` and ``FERRY_TOKEN`` override the
file so CI jobs need no file at all. The file holds a secret, so it is written
0600 through a temp file and ``os.replace`` (never half-written).

    server = "https://ferry.example.com"
    token = "fry_..."

    [pins."https://ferry.example.com"]
    root_keyids = ["<hex key id>"]
    keyring_version = 1
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ferry.client._errors import ConfigError


def config_path() -> Path:
    """Where the config lives, honouring ``FERRY_CONFIG`` and ``XDG_CONFIG_HOME``."""
    explicit = os.environ.get("FERRY_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "ferry" / "config.toml"


@dataclass(frozen=True)
class Pin:
    """The root keys trusted for one server, and the keyring version they were taken from."""

    root_keyids: tuple[str, ...]
    keyring_version: int = 1


@dataclass
class ClientConfig:
    """Settings from the file, with environment overrides applied by ``load_config``."""

    server: str | None = None
    token: str | None = None
    pins: dict[str, Pin] = field(default_factory=dict)
    path: Path = field(default_factory=config_path)

    def require(self) -> tuple[str, str]:
        """The server URL and token, or a ConfigError saying how to set them."""
        if not self.server:
            raise ConfigError(
                "no server URL configured; run `ferry configure --server URL "
                "--token TOKEN` or set FERRY_SERVER"
            )
        if not self.token:
            raise ConfigError(
                "no API token configured; run `ferry configure --token TOKEN` or set FERRY_TOKEN"
            )
        return self.server, self.token


def _read_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}; fix or delete it") from exc


def load_config(path: Path | None = None, *, use_env: bool = True) -> ClientConfig:
    """Read the config file (missing is fine) and apply FERRY_SERVER / FERRY_TOKEN."""
    path = path or config_path()
    data = _read_file(path)
    config = ClientConfig(
        server=_str_or_none(data.get("server")),
        token=_str_or_none(data.get("token")),
        pins=_read_pins(data.get("pins"), path),
        path=path,
    )
    if use_env:
        config.server = os.environ.get("FERRY_SERVER") or config.server
        config.token = os.environ.get("FERRY_TOKEN") or config.token
    return config


def _read_pins(raw: object, path: Path) -> dict[str, Pin]:
    if raw is None:
        return {}
    try:
        if not isinstance(raw, dict):
            raise TypeError("pins must be a table")
        return {
            str(server): Pin(
                tuple(str(k) for k in entry["root_keyids"]), int(entry.get("keyring_version", 1))
            )
            for server, entry in raw.items()
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"config file {path}: the [pins] section is malformed; delete it to "
            f"re-pin the server's root key on next download"
        ) from exc


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _toml_str(value: str) -> str:
    """A TOML basic string; JSON string escapes are a subset TOML accepts."""
    return json.dumps(value, ensure_ascii=False)


def render_config(config: ClientConfig) -> str:
    lines = []
    if config.server:
        lines.append(f"server = {_toml_str(config.server)}")
    if config.token:
        lines.append(f"token = {_toml_str(config.token)}")
    for server, pin in sorted(config.pins.items()):
        lines += [
            "",
            f"[pins.{_toml_str(server)}]",
            f"root_keyids = {json.dumps(list(pin.root_keyids))}",
            f"keyring_version = {pin.keyring_version}",
        ]
    return "\n".join(lines) + "\n"


def save_config(config: ClientConfig) -> Path:
    """Write the file atomically with mode 0600 (it holds a token)."""
    path = config.path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(render_config(config))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class TrustStore:
    """Root key pins per server URL, persisted in the config file (trust on first use)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_path()

    def get(self, server: str) -> Pin | None:
        return load_config(self.path, use_env=False).pins.get(_norm(server))

    def pin(self, server: str, pin: Pin) -> None:
        """Record ``pin`` for ``server``; keeps the rest of the file (read without env)."""
        config = load_config(self.path, use_env=False)
        config.pins[_norm(server)] = pin
        save_config(config)


class MemoryTrustStore(TrustStore):
    """Pins kept in memory only: for scripts that must not write a config file."""

    def __init__(self, pins: dict[str, Pin] | None = None) -> None:
        self.pins = {_norm(k): v for k, v in (pins or {}).items()}

    def get(self, server: str) -> Pin | None:
        return self.pins.get(_norm(server))

    def pin(self, server: str, pin: Pin) -> None:
        self.pins[_norm(server)] = pin


def _norm(server: str) -> str:
    return server.rstrip("/")
