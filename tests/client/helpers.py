"""Shared helpers of the client and CLI tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path

FERRY = Path(sys.executable).with_name("ferry")
SIGNATURE = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 2]}],
}


@dataclass(frozen=True)
class Server:
    url: str
    admin_token: str
    data_dir: Path

    def blob_path(self, sha256: str) -> Path:
        """Where the server's local blob store keeps a blob (for tampering tests)."""
        return self.data_dir / "blobs" / sha256[:2] / sha256[2:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def push_metadata(**overrides: object) -> dict[str, object]:
    meta: dict[str, object] = {
        "format": "onnx",
        "flavor": "onnxruntime",
        "signature": SIGNATURE,
        "created_by": "ci@team",
        "run_id": "run-1",
        "git_commit": "3f2a9c1",
        "hardware": ["x86_64"],
        "metrics": {"accuracy": 0.93},
        "hyperparameters": {"lr": 0.001},
    }
    meta.update(overrides)
    return meta
