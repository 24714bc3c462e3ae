"""Namespaces, registered models, immutable versions, version tags and aliases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from ferry.server.core.columns import json_field, utc_now


class Namespace(SQLModel, table=True):
    __tablename__ = "namespace"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    description: str = ""
    require_distinct_approver: bool = False
    created_at: str = Field(default_factory=utc_now)


class RegisteredModel(SQLModel, table=True):
    """A named model; ``last_version`` is the counter row that numbers versions."""

    __tablename__ = "registered_model"
    __table_args__ = (UniqueConstraint("namespace_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    namespace_id: int = Field(foreign_key="namespace.id", index=True)
    name: str = Field(index=True)
    description: str = ""
    tags: list[str] = json_field(list)
    last_version: int = 0
    created_at: str = Field(default_factory=utc_now)


class ModelVersion(SQLModel, table=True):
    """One immutable version; only ``stage`` (and its tags/aliases) change later."""

    __tablename__ = "model_version"
    __table_args__ = (
        UniqueConstraint("model_id", "version"),
        UniqueConstraint("model_id", "files_digest"),
    )

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="registered_model.id", index=True)
    version: int
    stage: str = "None"
    files: list[dict[str, Any]] = json_field(list)
    files_digest: str
    format: str
    flavor: str
    signature: dict[str, Any] = json_field(dict)
    hardware: list[str] = json_field(list)
    meta: dict[str, Any] = json_field(dict)
    manifest_sha256: str = Field(index=True)
    created_by_actor: str
    publisher_token_id: int | None = None
    created_at: str = Field(default_factory=utc_now)
    stage_changed_at: str | None = None


class VersionTag(SQLModel, table=True):
    __tablename__ = "version_tag"

    version_id: int = Field(foreign_key="model_version.id", primary_key=True)
    tag: str = Field(primary_key=True, index=True)


class ModelAlias(SQLModel, table=True):
    __tablename__ = "model_alias"

    model_id: int = Field(foreign_key="registered_model.id", primary_key=True)
    alias: str = Field(primary_key=True)
    version_id: int = Field(foreign_key="model_version.id", index=True)
