"""Server settings: one class and one parser, read from ``FERRY_*`` environment variables.

A plain dataclass (not pydantic-settings) keeps the dependency list short; every
field has a development-safe default and nothing secret lives here — keys and the
bootstrap admin token are generated under the data directory on first start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

ENV_PREFIX = "FERRY_"


@dataclass(frozen=True)
class FleetSettings:
    """Knobs of enrolment, desired states and the rollout engine (all in seconds)."""

    rollout_tick_s: float = 5.0
    desired_state_ttl_s: int = 24 * 3600
    poll_interval_s: int = 60
    start_rollout_engine: bool = True
    last_seen_flush_s: float = 2.0
    checkin_cache_poll_s: float = 0.5


@dataclass(frozen=True)
class Settings:
    """Everything `create_app` needs to know about its environment."""

    data_dir: Path = field(default_factory=lambda: Path("data"))
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    max_blob_bytes: int = 64 * 1024**3
    keyring_expiry_days: int = 365
    webhook_max_attempts: int = 6
    webhook_backoff_seconds: float = 2.0
    webhook_timeout_seconds: float = 10.0
    webhook_poll_seconds: float = 1.0
    start_webhook_worker: bool = True
    print_admin_token: bool = True
    deltas_enabled: bool = True
    delta_max_fraction: float = 0.6
    delta_build_workers: int = 1
    fleet: FleetSettings = field(default_factory=FleetSettings)

    def __post_init__(self) -> None:
        if not 0 < self.delta_max_fraction <= 1 or self.delta_build_workers < 1:
            raise ValueError("FERRY_DELTA_MAX_FRACTION must be in (0, 1] and "
                             "FERRY_DELTA_BUILD_WORKERS at least 1")
        object.__setattr__(self, "data_dir", Path(self.data_dir).resolve())
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'ferry.db'}")
        if not self.public_url:
            object.__setattr__(self, "public_url", f"http://{self.host}:{self.port}")

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def delta_dir(self) -> Path:
        return self.data_dir / "deltas"

    @property
    def key_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin-token"

    def with_overrides(self, **changes: object) -> Settings:
        """Copy with some fields changed (CLI flags win over the environment)."""
        clean = {k: v for k, v in changes.items() if v is not None}
        if "data_dir" in clean and "database_url" not in clean:
            clean["database_url"] = os.environ.get(ENV_PREFIX + "DATABASE_URL", "")
        if ("host" in clean or "port" in clean) and "public_url" not in clean:
            clean["public_url"] = os.environ.get(ENV_PREFIX + "PUBLIC_URL", "")
        return replace(self, **clean)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``FERRY_<FIELD>`` variables, e.g. ``FERRY_DATA_DIR``.

        The sections read the same variables by the same rule (``FERRY_ROLLOUT_TICK_S``
        sets ``fleet.rollout_tick_s``): one parser, one place to look.
        """
        env = os.environ if environ is None else environ
        return cls(**_read(cls, env), fleet=FleetSettings(**_read(FleetSettings, env)))


def _read(cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    """The ``FERRY_<FIELD>`` values present in ``env`` for the plain fields of ``cls``."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for item in fields(cls):
        kind = hints[item.name]
        if not item.init or is_dataclass(kind):
            continue
        raw = env.get(ENV_PREFIX + item.name.upper())
        if raw is None or raw == "":
            continue
        try:
            values[item.name] = _convert(raw, kind)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}{item.name.upper()}={raw!r} is not a valid "
                             f"{getattr(kind, '__name__', kind)}") from exc
    return values


def _convert(raw: str, kind: Any) -> object:
    if kind is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    return kind(raw)
