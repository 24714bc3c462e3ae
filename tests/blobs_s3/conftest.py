"""moto's standalone S3 server for the session; a fresh bucket and store per test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from ferry.server.blobs.s3 import S3BlobStore
from ferry.server.core.settings import BlobSettings
from tests.server.conftest import harness_factory, prepared_data_dir  # noqa: F401
from tests.support.s3 import CREDENTIALS, MotoServer


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    return moto.bucket()


@pytest.fixture
def settings(moto: MotoServer, bucket: str, s3_env: None) -> BlobSettings:
    return BlobSettings(backend="s3", s3_endpoint_url=moto.url, s3_bucket=bucket, s3_part_mb=5)


@pytest.fixture
def store(settings: BlobSettings) -> Iterator[S3BlobStore]:
    store = S3BlobStore(settings)
    try:
        yield store
    finally:
        store.close()


def other(settings: BlobSettings, **changes: object) -> BlobSettings:
    return replace(settings, **changes)  # type: ignore[arg-type]
