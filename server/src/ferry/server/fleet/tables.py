"""Fleet: enrolment tokens, devices, per-slot versions, status history, desired states."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from ferry.server.core import epoch
from ferry.server.core.columns import json_field, utc_now


class EnrollmentToken(SQLModel, table=True):
    """A secret that lets devices join one namespace; only its sha256 is stored."""

    __tablename__ = "enrollment_token"

    id: int | None = Field(default=None, primary_key=True)
    namespace: str = Field(index=True)
    name: str
    token_hash: str = Field(unique=True)
    max_uses: int | None = None  # None = unlimited until expiry
    uses: int = 0
    expires_at: str | None = None
    tags: dict[str, str] = json_field(dict)  # applied to every device enrolled with it
    created_by: str
    created_at: str = Field(default_factory=utc_now)
    revoked_at: str | None = None


class Device(SQLModel, table=True):
    """One enrolled device, its credential hashes and its last signed desired state.

    The desired-state columns live on the device row so that the row lock taken to
    bump ``ds_sequence`` also serialises concurrent issuers (two replicas).
    """

    __tablename__ = "device"

    id: str = Field(primary_key=True)
    namespace: str = Field(index=True)
    hardware: str = Field(index=True)
    agent_version: str = ""
    tags: dict[str, str] = json_field(dict)
    groups: list[str] = json_field(list)
    credential_hash: str = Field(unique=True)
    mqtt_password_hash: str = ""
    enrolled_at: str = Field(default_factory=utc_now)
    enrolled_with: int | None = None
    last_seen_at: str | None = None
    revoked_at: str | None = None
    # Until then one enrolment of this id without its current credential is allowed.
    reenrollment_approved_until: str | None = None
    ds_sequence: int = 0
    ds_content_digest: str = ""
    ds_envelope: str = ""
    ds_expires_at: str = ""


class DeviceSlot(SQLModel, table=True):
    """What one model slot of a device runs (installed) and holds ready (staged)."""

    __tablename__ = "device_slot"
    __table_args__ = (Index("ix_device_slot_model_installed", "model", "installed_version"),)

    device_id: str = Field(foreign_key="device.id", primary_key=True)
    slot: str = Field(primary_key=True)
    model: str = ""
    installed_version: int | None = None
    staged_version: int | None = None
    state: str = "idle"
    updated_at: str = Field(default_factory=utc_now)
    last_report_at: str = ""  # the device's time of the report applied last
    last_report_seq: int | None = None  # its report_seq: lower ones are stale


class DeviceReport(SQLModel, table=True):
    """Status history: every accepted report once (``report_id`` is unique)."""

    __tablename__ = "device_report"

    id: int | None = Field(default=None, primary_key=True)
    report_id: str = Field(unique=True)
    device_id: str = Field(foreign_key="device.id", index=True)
    slot: str
    state: str
    at: str
    from_version: int | None = None
    to_version: int | None = None
    error_code: str | None = None
    detail: str = ""
    rollout_id: str | None = None
    sequence: int | None = None
    report_seq: int | None = None
    timings: dict[str, Any] = json_field(dict)
    received_at: str = Field(default_factory=utc_now)


class FleetEpoch(SQLModel, table=True):
    """One row whose ``value`` every change that can alter a desired state bumps.

    Replicas poll it to empty their check-in caches (`ferry.server.checkin.cache`).
    """

    __tablename__ = "fleet_epoch"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    value: int = 0


class FleetChange(SQLModel, table=True):
    """The scope of a narrowed epoch bump: whose documents the change at ``epoch`` can alter.

    Written and read by `ferry.server.core.epoch`, so that another replica voids only
    the cached documents a wave change altered (`ferry.server.checkin.cache`).
    """

    __tablename__ = "fleet_change"

    epoch: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    scope: str = Field(primary_key=True)


# What a desired state and a device's authentication depend on (`ferry.server.core.epoch`).
epoch.watch(Device, ["revoked_at", "tags", "groups", "hardware", "namespace", "credential_hash"])
