"""ferry.client: the Python SDK for the Ferry registry (typed, synchronous, over httpx).

from ferry.client import FerryClient
with FerryClient.from_config() as ferry:
    version = ferry.push_version("vision", "resnet", [Path("model.onnx")], ...)
    ferry.download_version("vision", "resnet", "champion", Path("out/"))
"""

from ferry.client._client import FerryClient, ProgressCallback
from ferry.client._config import (
    ClientConfig,
    MemoryTrustStore,
    Pin,
    TrustStore,
    config_path,
    load_config,
    save_config,
)
from ferry.client._errors import (
    ApiError,
    BadRequestError,
    ClientError,
    ConfigError,
    ConflictError,
    DigestMismatchError,
    ForbiddenError,
    InputError,
    NotFoundError,
    PayloadTooLargeError,
    RangeNotSatisfiableError,
    RateLimitedError,
    TransportError,
    UnauthenticatedError,
    ValidationError,
    VerificationError,
)
from ferry.client._models import (
    AliasBinding,
    AuditEntry,
    DownloadResult,
    FileEntry,
    Identity,
    Model,
    Namespace,
    Token,
    TransferProgress,
    Version,
)
from ferry.client._search import parse_threshold
from ferry.client._transfer import MANIFEST_NAME

__all__ = [
    "MANIFEST_NAME",
    "AliasBinding",
    "ApiError",
    "AuditEntry",
    "BadRequestError",
    "ClientConfig",
    "ClientError",
    "ConfigError",
    "ConflictError",
    "DigestMismatchError",
    "DownloadResult",
    "FerryClient",
    "FileEntry",
    "ForbiddenError",
    "Identity",
    "InputError",
    "MemoryTrustStore",
    "Model",
    "Namespace",
    "NotFoundError",
    "PayloadTooLargeError",
    "Pin",
    "ProgressCallback",
    "RangeNotSatisfiableError",
    "RateLimitedError",
    "Token",
    "TransferProgress",
    "TransportError",
    "TrustStore",
    "UnauthenticatedError",
    "ValidationError",
    "VerificationError",
    "Version",
    "config_path",
    "load_config",
    "parse_threshold",
    "save_config",
]
