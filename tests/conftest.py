"""Fixtures shared by several test folders (each starts its service only when used)."""

from tests.support.s3 import moto  # noqa: F401  (one S3-compatible server per session)
