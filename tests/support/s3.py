"""A real S3-compatible server for tests: moto's standalone server on a free port.

moto (``moto[server]``) speaks the S3 HTTP API (path-style buckets, multipart
uploads, ranged GETs, presigned URLs) from a pure-Python process, so it installs
from PyPI with the rest of the `dev` group and needs no container. It does not
check signatures or the expiry of presigned URLs: tests keep to what real S3
guarantees and check the signed expiry in the URL instead (docs/deploy.md).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "ferry-test",
    "AWS_SECRET_ACCESS_KEY": "ferry-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoServer:
    """``python -m moto.server`` on 127.0.0.1 and a free port; `bucket()` makes a fresh one."""

    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=log,
                env={**os.environ, **CREDENTIALS, **self.extra_env},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto exited: {self.log_path.read_text()[-2000:]}")
            try:
                httpx.get(f"{self.url}/moto-api/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"moto did not answer on {self.url}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def bucket(self) -> str:
        """A new, empty bucket (tests never share one)."""
        name = f"ferry-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, **extra: str) -> dict[str, str]:
        """``FERRY_*`` and AWS variables that point a `ferry server` at ``bucket``."""
        return {
            **CREDENTIALS,
            "FERRY_BLOB_BACKEND": "s3",
            "FERRY_BLOB_S3_ENDPOINT_URL": self.url,
            "FERRY_BLOB_S3_BUCKET": bucket,
            **extra,
        }

    def keys(self, bucket: str) -> list[str]:
        answer = self.client().list_objects_v2(Bucket=bucket)
        return [item["Key"] for item in answer.get("Contents", [])]

    def pending_uploads(self, bucket: str) -> list[str]:
        answer = self.client().list_multipart_uploads(Bucket=bucket)
        return [item["Key"] for item in answer.get("Uploads", [])]


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server per test session (import this fixture where it is needed)."""
    pytest.importorskip("moto.server", reason="moto[server] is in the dev group: make install")
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()
