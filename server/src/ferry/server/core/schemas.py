"""Pydantic building blocks every concept's API schemas share, and the one error shape."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"

SHA256_PATTERN = r"^[0-9a-f]{64}$"

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]

Tag = Annotated[str, StringConstraints(min_length=1, max_length=128)]

Timestamp = Annotated[str, Field(examples=["2026-11-25T03:00:00Z"])]


def has_non_finite(value: Any) -> bool:
    """NaN/Infinity parse from JSON in Python but not in PostgreSQL: refuse them early."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(has_non_finite(v) for v in value)
    return False


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
