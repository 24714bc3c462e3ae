"""Request and response bodies of the registry API: namespaces, models, versions, aliases."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from ferry.server.core.schemas import Name, Sha256, Strict, Tag, has_non_finite


class Stage(StrEnum):
    NONE = "None"
    STAGING = "Staging"
    PRODUCTION = "Production"
    ARCHIVED = "Archived"


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
    tags: list[Tag] = Field(default_factory=list)


class ModelPublic(BaseModel):
    namespace: str
    name: str
    description: str
    tags: list[str]
    latest_version: int | None
    aliases: dict[str, int]
    created_at: str


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
    hardware: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        default_factory=list
    )
    metadata: VersionMetadata
    tags: list[Tag] = Field(default_factory=list)
    # Files identical to an existing version's (same paths and digests) return that
    # version; True registers them as a new version anyway (e.g. new metadata, same bytes).
    new_version: bool = False

    @model_validator(mode="after")
    def _finite_numbers(self) -> VersionCreate:
        if has_non_finite(self.metadata.model_dump()) or has_non_finite(self.signature):
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


class VersionRegistered(VersionPublic):
    """The answer to registering a version: ``existing`` when the files were already
    registered as this version (nothing new was created), and which fields of the
    request's metadata differ from what that version holds."""

    existing: bool = False
    differences: list[str] = []


class TagsChange(Strict):
    add: list[Tag] = Field(default_factory=list)
    remove: list[Tag] = Field(default_factory=list)


class StageChange(Strict):
    stage: Stage
    comment: Annotated[str, StringConstraints(max_length=4096)] = ""


class AliasSet(Strict):
    version: Annotated[int, Field(ge=1, le=2**53 - 1)]


class AliasPublic(BaseModel):
    alias: str
    version: int
