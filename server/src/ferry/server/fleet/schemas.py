"""Request and response bodies of the fleet API (devices, enrolment, status)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ferry.server.core.schemas import NAME_PATTERN, Strict, Timestamp

Text = Annotated[str, StringConstraints(min_length=1, max_length=128)]
TagMap = dict[
    Annotated[str, StringConstraints(max_length=63)],
    Annotated[str, StringConstraints(max_length=64)],
]


class EnrollmentTokenCreate(Strict):
    namespace: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    name: Text
    max_uses: Annotated[int, Field(ge=1, le=10_000_000)] | None = 1
    expires_at: Timestamp | None = None
    expires_in_s: Annotated[int, Field(ge=1, le=10 * 365 * 86400)] | None = None
    tags: TagMap = Field(default_factory=dict)


class EnrollmentTokenPublic(BaseModel):
    id: int
    namespace: str
    name: str
    max_uses: int | None
    uses: int
    expires_at: str | None
    tags: dict[str, str]
    created_by: str
    created_at: str
    revoked_at: str | None


class EnrollmentTokenCreated(EnrollmentTokenPublic):
    token: str


class EnrollRequest(Strict):
    enrollment_token: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    device_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    hardware: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    agent_version: Annotated[str, StringConstraints(max_length=64)] = ""
    tags: TagMap = Field(default_factory=dict)
    # Re-enrolling an existing id: the device's current credential (``frd_…``).
    credential: Annotated[str, StringConstraints(max_length=256)] | None = None


class ReenrollmentApproved(BaseModel):
    device_id: str
    reenrollment_approved_until: str


class MqttLogin(BaseModel):
    url: str
    username: str
    password: str


class Enrolled(BaseModel):
    device_id: str
    credential: str
    keyring: dict[str, Any]
    groups: list[str]
    mqtt: MqttLogin | None
    poll_interval_s: int


class StatusBatch(BaseModel):
    """Reports are validated by `ferry.protocol.documents.StatusReport.from_dict`."""

    model_config = ConfigDict(extra="forbid")
    reports: Annotated[list[dict[str, Any]], Field(max_length=500)]


class StatusAccepted(BaseModel):
    accepted: list[str]
    duplicates: list[str]


class SlotPublic(BaseModel):
    slot: str
    model: str
    installed_version: int | None
    staged_version: int | None
    state: str
    updated_at: str


class DevicePublic(BaseModel):
    id: str
    namespace: str
    hardware: str
    agent_version: str
    tags: dict[str, str]
    groups: list[str]
    enrolled_at: str
    last_seen_at: str | None
    revoked_at: str | None
    desired_sequence: int
    slots: list[SlotPublic] = Field(default_factory=list)


class ReportPublic(BaseModel):
    report_id: str
    slot: str
    state: str
    at: str
    from_version: int | None
    to_version: int | None
    error_code: str | None
    detail: str
    rollout_id: str | None
    received_at: str


class DeviceDetail(DevicePublic):
    history: list[ReportPublic]


class TagsChange(Strict):
    add: TagMap = Field(default_factory=dict)
    remove: list[Annotated[str, StringConstraints(max_length=63)]] = Field(default_factory=list)
