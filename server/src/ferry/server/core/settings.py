"""Server settings: one dataclass, read from ``FERRY_*`` environment variables.

A plain dataclass (not pydantic-settings) keeps the dependency list short; every
field has a development-safe default and nothing secret lives here — keys and the
bootstrap admin token are generated under the data directory on first start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "FERRY_"


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

    def with_overrides(self, **changes: Any) -> Settings:
        """Copy with some fields changed (CLI flags win over the environment)."""
        # Any: the values are per-field typed; `replace` rejects unknown names at run time.
        clean: dict[str, Any] = {k: v for k, v in changes.items() if v is not None}
        if "data_dir" in clean and "database_url" not in clean:
            clean["database_url"] = os.environ.get(ENV_PREFIX + "DATABASE_URL", "")
        if ("host" in clean or "port" in clean) and "public_url" not in clean:
            clean["public_url"] = os.environ.get(ENV_PREFIX + "PUBLIC_URL", "")
        return replace(self, **clean)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Build settings from ``FERRY_<FIELD>`` variables, e.g. ``FERRY_DATA_DIR``."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}  # each value converted to its field's type by _FIELD_TYPES
        for name, kind in _FIELD_TYPES.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                kwargs[name] = _convert(raw, kind)
        return cls(**kwargs)


_FIELD_TYPES: dict[str, type] = {
    "data_dir": Path,
    "database_url": str,
    "host": str,
    "port": int,
    "public_url": str,
    "max_blob_bytes": int,
    "keyring_expiry_days": int,
    "webhook_max_attempts": int,
    "webhook_backoff_seconds": float,
    "webhook_timeout_seconds": float,
    "webhook_poll_seconds": float,
    "start_webhook_worker": bool,
    "print_admin_token": bool,
    "deltas_enabled": bool,
    "delta_max_fraction": float,
    "delta_build_workers": int,
}


def _convert(raw: str, kind: type) -> object:
    if kind is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    return kind(raw)
