"""Request and response bodies of the registry API (the OpenAPI schema comes from here)."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from ferry.server.auth import ServerRole

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Timestamp = Annotated[str, Field(examples=["2026-11-25T03:00:00Z"])]


def _has_non_finite(value: Any) -> bool:
    """NaN/Infinity parse from JSON in Python but not in PostgreSQL: refuse them early."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


class Stage(StrEnum):
    NONE = "None"
    STAGING = "Staging"
    PRODUCTION = "Production"
    ARCHIVED = "Archived"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str


# --- tokens -------------------------------------------------------------------------


class TokenRole(StrEnum):
    """Roles an admin can grant; device credentials come from enrolment instead."""

    ADMIN = "admin"
    PUBLISHER = "publisher"
    APPROVER = "approver"
    OPERATOR = "operator"
    VIEWER = "viewer"


class TokenCreate(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    role: TokenRole
    namespaces: list[Annotated[str, StringConstraints(pattern=r"^(\*|[a-z0-9][a-z0-9._-]{0,62})$")]] = ["*"]
    expires_at: Timestamp | None = None


class TokenPublic(BaseModel):
    id: int
    name: str
    role: ServerRole
    namespaces: list[str]
    created_at: str
    expires_at: str | None
    revoked_at: str | None = None


class TokenCreated(TokenPublic):
    token: str


class WhoAmI(BaseModel):
    name: str
    role: ServerRole
    namespaces: list[str]


# --- namespaces and models ----------------------------------------------------------


class NamespaceCreate(Strict):
    name: Name
    require_distinct_approver: bool = False
    description: Annotated[str, StringConstraints(max_length=4096)] = ""


class NamespacePublic(BaseModel):
    name: str
    require_distinct_approver: bool
    description: str
    created_at: str


class ModelCreate(Strict):
    namespace: Name
    name: Name
    description: Annotated[str, StringConstraints(max_length=4096)] = ""
    tags: list[Tag] = []


class ModelPublic(BaseModel):
    namespace: str
    name: str
    description: str
    tags: list[str]
    latest_version: int | None
    aliases: dict[str, int]
    created_at: str


# --- versions -----------------------------------------------------------------------


class FileSpec(Strict):
    path: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    sha256: Sha256
    size: Annotated[int, Field(ge=0, le=2**53 - 1)]


class TrainingData(BaseModel):
    digest: str | None = None
    version: str | None = None


class VersionMetadata(BaseModel):
    """Required: created_by, run_id, git_commit. Recommended: the rest. Extra keys are kept."""

    model_config = ConfigDict(extra="allow")
    created_by: Annotated[str, StringConstraints(min_length=1)]
    run_id: Annotated[str, StringConstraints(min_length=1)]
    git_commit: Annotated[str, StringConstraints(min_length=1)]
    training_data: TrainingData | None = None
    metrics: dict[str, float] = {}
    hyperparameters: dict[str, Any] = {}
    environment_hash: str | None = None
    model_card: str | None = None


class VersionCreate(Strict):
    files: Annotated[list[FileSpec], Field(min_length=1, max_length=10_000)]
    format: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    flavor: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    signature: dict[str, Any]
    hardware: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = []
    metadata: VersionMetadata
    tags: list[Tag] = []

    @model_validator(mode="after")
    def _finite_numbers(self) -> VersionCreate:
        if _has_non_finite(self.metadata.model_dump()) or _has_non_finite(self.signature):
            raise ValueError("NaN and Infinity are not allowed")
        return self


class VersionPublic(BaseModel):
    namespace: str
    model: str
    version: int
    stage: Stage
    files: list[FileSpec]
    format: str
    flavor: str
    signature: dict[str, Any]
    hardware: list[str]
    manifest_sha256: str
    metadata: dict[str, Any]
    tags: list[str]
    aliases: list[str]
    created_at: str
    created_by_actor: str
    stage_changed_at: str | None


class TagsChange(Strict):
    add: list[Tag] = []
    remove: list[Tag] = []


class StageChange(Strict):
    stage: Stage
    comment: Annotated[str, StringConstraints(max_length=4096)] = ""


class AliasSet(Strict):
    version: Annotated[int, Field(ge=1, le=2**53 - 1)]


class AliasPublic(BaseModel):
    alias: str
    version: int


class BlobStored(BaseModel):
    sha256: str
    size: int
    created: bool


# --- audit and webhooks -------------------------------------------------------------


class AuditEntryPublic(BaseModel):
    id: int
    at: str
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditVerify(BaseModel):
    ok: bool
    entries: int
    first_bad_id: int | None
    reason: str | None = None


class WebhookCreate(Strict):
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=2048)]
    events: Annotated[list[str], Field(min_length=1)]
    secret: Annotated[str, StringConstraints(min_length=8, max_length=512)]


class WebhookPublic(BaseModel):
    id: int
    url: str
    events: list[str]
    created_at: str
    active: bool


class DeliveryPublic(BaseModel):
    id: int
    event_id: int
    event_type: str
    status: str
    attempts: int
    last_error: str | None
    delivered_at: str | None
