"""Server settings: one class and one parser, read from ``FERRY_*`` environment variables.

A plain dataclass (not pydantic-settings) keeps the dependency list short; every
field has a development-safe default and nothing secret lives here — keys and the
bootstrap admin token are generated under the data directory on first start.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from ferry.protocol import topics

ENV_PREFIX = "FERRY_"

MQTT_PREFIX = ENV_PREFIX + "MQTT_"
DEFAULT_MQTT_PORT = 1885
# Not a valid device id ("@" is outside [A-Za-z0-9._:-]): no device can ever hold this login
# or, with client ids bound to logins, this client id.
SERVER_USERNAME = "ferry@server"
EMBEDDED_BROKERS = ("auto", "mosquitto", "amqtt")
BLOB_PREFIX = ENV_PREFIX + "BLOB_"
BLOB_BACKENDS = ("local", "s3")


class SettingsError(ValueError):
    """A ``FERRY_*`` setting is invalid (its message names the variable and the fix)."""

    code = "config_invalid"


def _is_device_id(name: str) -> bool:
    try:
        topics.device_status(name)
    except ValueError:
        return False
    return True


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
class MqttSettings:
    """Where the broker is, how the server logs in, and what devices are told."""

    enabled: bool = False
    url: str = ""  # external broker; empty = start the embedded one
    host: str = "127.0.0.1"  # embedded broker bind address
    port: int = DEFAULT_MQTT_PORT  # embedded broker port
    public_url: str = ""  # what enrolment tells devices; defaults to the broker URL
    username: str = SERVER_USERNAME
    password: str = ""  # external broker: the server user's password
    # "$share/<group>/…" splits status traffic between replicas, but Mosquitto 2.0 does not
    # restore a shared subscription after a crash: empty (default) = a plain subscription,
    # which the broker's persistence restores (docs/mqtt.md, "After a broker crash").
    shared_group: str = ""
    password_file: str = ""  # Mosquitto password file the server keeps up to date
    pid_file: str = ""  # Mosquitto pid file: SIGHUP after rewriting passwords
    ingest_batch: int = 200  # status reports per database transaction
    client_id: str = ""  # defaults to the username (brokers bind ids to logins)
    embedded_broker: str = "auto"  # auto: mosquitto when installed, else amqtt
    mosquitto_binary: str = ""  # empty: /usr/sbin/mosquitto, /usr/local/sbin, PATH
    state_dir: str = ""  # embedded Mosquitto's files; `ferry server`: <data>/mqtt
    operator_password_file: str = ""  # logins the operator keeps; merged, never written

    @property
    def embedded(self) -> bool:
        return self.enabled and not self.url

    @property
    def broker_url(self) -> str:
        return self.url or f"mqtt://{self.host}:{self.port}"

    @property
    def session_id(self) -> str:
        """The server's MQTT client id: its login, as the broker binds ids to logins."""
        return self.client_id or self.username

    @property
    def device_url(self) -> str:
        return self.public_url or self.broker_url

    def with_overrides(self, **changes: Any) -> MqttSettings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def __post_init__(self) -> None:
        if self.url:
            parts = urlsplit(self.url)
            if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
                raise SettingsError(
                    f"{MQTT_PREFIX}URL={self.url!r} must look like mqtt://host:port"
                )
        if _is_device_id(self.username):
            raise SettingsError(
                f"{MQTT_PREFIX}USERNAME={self.username!r} could be a device's "
                f"id (and its client id): use a name with '@', e.g. "
                f"{SERVER_USERNAME!r}"
            )
        if self.embedded_broker not in EMBEDDED_BROKERS:
            raise SettingsError(
                f"{MQTT_PREFIX}EMBEDDED_BROKER={self.embedded_broker!r} must be "
                f"one of {', '.join(EMBEDDED_BROKERS)}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MqttSettings:
        """``FERRY_MQTT_<FIELD>``; an external broker's URL implies MQTT on."""
        values = _read(cls, os.environ if environ is None else environ, MQTT_PREFIX)
        if values.get("url") and "enabled" not in values:
            values["enabled"] = True
        return cls(**values)


@dataclass(frozen=True)
class BlobSettings:
    """Where blob and delta bytes live and how devices fetch them (``FERRY_BLOB_<FIELD>``).

    S3 credentials are never settings: boto3 reads them from its usual places
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role).
    """

    backend: str = "local"  # local: <data_dir>/blobs; s3: an S3-compatible bucket
    s3_endpoint_url: str = ""  # empty: AWS itself; e.g. http://127.0.0.1:9000 for a local store
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_prefix: str = ""  # key prefix inside the bucket, e.g. "ferry/"
    s3_part_mb: int = 8  # multipart upload part size (S3's minimum is 5 MiB)
    presign_endpoint_url: str = ""  # the store as devices reach it; empty: s3_endpoint_url
    presign_expiry_s: int = 300  # lifetime of a presigned download URL
    redirect: bool = True  # answer device downloads with 307 to a presigned URL (s3)
    accel_redirect: str = ""  # local: nginx internal location, e.g. /_ferry_blobs/

    def __post_init__(self) -> None:
        if self.backend not in BLOB_BACKENDS:
            raise SettingsError(
                f"{BLOB_PREFIX}BACKEND={self.backend!r} must be one of {', '.join(BLOB_BACKENDS)}"
            )
        if self.backend == "s3" and not self.s3_bucket:
            raise SettingsError(f"{BLOB_PREFIX}BACKEND=s3 needs {BLOB_PREFIX}S3_BUCKET")
        if self.backend == "s3" and importlib.util.find_spec("boto3") is None:
            raise SettingsError(
                f"{BLOB_PREFIX}BACKEND=s3 needs boto3: pip install 'ferry-server[s3]'"
            )
        for name in ("s3_endpoint_url", "presign_endpoint_url"):
            url = getattr(self, name)
            if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc):
                raise SettingsError(
                    f"{BLOB_PREFIX}{name.upper()}={url!r} must look like http(s)://host:port"
                )
        if not 5 <= self.s3_part_mb <= 5 * 1024:
            raise SettingsError(f"{BLOB_PREFIX}S3_PART_MB must be between 5 and 5120 (MiB)")
        if not 1 <= self.presign_expiry_s <= 7 * 24 * 3600:
            raise SettingsError(f"{BLOB_PREFIX}PRESIGN_EXPIRY_S must be between 1 and 604800")
        if self.accel_redirect and not (
            self.accel_redirect.startswith("/") and self.accel_redirect.endswith("/")
        ):
            raise SettingsError(
                f"{BLOB_PREFIX}ACCEL_REDIRECT={self.accel_redirect!r} must be a location "
                "that starts and ends with '/', e.g. /_ferry_blobs/"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BlobSettings:
        return cls(**_read(cls, os.environ if environ is None else environ, BLOB_PREFIX))


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
    # `ferry server --workers N` sets these for its worker processes (docs/deploy.md).
    workers: int = 1
    lease_poll_s: float = 2.0  # how often a worker tries the leases it does not hold
    fleet: FleetSettings = field(default_factory=FleetSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    blobs: BlobSettings = field(default_factory=BlobSettings)

    def __post_init__(self) -> None:
        if not 0 < self.delta_max_fraction <= 1 or self.delta_build_workers < 1:
            raise ValueError(
                "FERRY_DELTA_MAX_FRACTION must be in (0, 1] and "
                "FERRY_DELTA_BUILD_WORKERS at least 1"
            )
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
        clean: dict[str, Any] = {k: v for k, v in changes.items() if v is not None}
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
        return cls(
            **_read(cls, env),
            fleet=FleetSettings(**_read(FleetSettings, env)),
            mqtt=MqttSettings.from_env(env),
            blobs=BlobSettings.from_env(env),
        )


def _read(cls: type, env: Mapping[str, str], prefix: str = ENV_PREFIX) -> dict[str, Any]:
    """The ``<prefix><FIELD>`` values present in ``env`` for the plain fields of ``cls``."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for item in fields(cls):
        kind = hints[item.name]
        if not item.init or is_dataclass(kind):
            continue
        raw = env.get(prefix + item.name.upper())
        if raw is None or (raw == "" and kind is not str):
            continue
        try:
            values[item.name] = _convert(raw, kind)
        except ValueError as exc:
            raise SettingsError(
                f"{prefix}{item.name.upper()}={raw!r} is not a valid "
                f"{getattr(kind, '__name__', kind)}"
            ) from exc
    return values


def _convert(raw: str, kind: Any) -> object:
    if kind is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    return kind(raw)
