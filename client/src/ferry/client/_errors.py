"""Errors raised by the Ferry SDK: one hierarchy, blame-split, each with a stable code.

    ClientError                       (code varies)
    ├── ConfigError                   (not_configured)   no server URL / token known
    ├── InputError                    (bad_input)        caller passed something unusable
    ├── TransportError                (unreachable)      the server could not be reached
    ├── VerificationError             (protocol code)    downloaded data failed verification
    └── ApiError                      (server's code)    the server answered with an error
        ├── BadRequestError           (400 bad_request)
        │   └── DigestMismatchError   (400 digest_mismatch)
        ├── UnauthenticatedError      (401 unauthenticated)
        ├── ForbiddenError            (403 forbidden)
        ├── NotFoundError             (404 not_found)
        ├── ConflictError             (409 conflict)
        ├── PayloadTooLargeError      (413 payload_too_large)
        ├── RangeNotSatisfiableError  (416 range_not_satisfiable)
        ├── ValidationError           (422 validation_error)
        └── RateLimitedError          (429 rate_limited)

httpx and ferry.protocol exceptions are translated once, in the client, with
``raise ... from exc``; nothing else leaks out of ``ferry.client``.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of every SDK error: a stable ``code``, a human ``message``, the HTTP status if any."""

    code = "client_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.details = details
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        prefix = f"{self.status} {self.code}" if self.status else self.code
        return f"{prefix}: {self.message}"


class ConfigError(ClientError):
    """No server URL or token is known, or the config file is unreadable."""

    code = "not_configured"


class InputError(ClientError):
    """The caller passed something unusable (malformed metric, missing file, bad metadata)."""

    code = "bad_input"


class TransportError(ClientError):
    """The server could not be reached (refused, DNS, timeout, connection dropped)."""

    code = "unreachable"


class VerificationError(ClientError):
    """Downloaded data failed signature, digest, size or hash verification; nothing was kept."""

    code = "verification_failed"


class ApiError(ClientError):
    """The server answered with its JSON error shape."""

    code = "api_error"


class BadRequestError(ApiError):
    """The server found the request senseless."""

    code = "bad_request"


class DigestMismatchError(BadRequestError):
    """Uploaded bytes hash differently from the digest they were sent under."""

    code = "digest_mismatch"


class UnauthenticatedError(ApiError):
    """The token is missing, unknown, revoked or expired."""

    code = "unauthenticated"


class ForbiddenError(ApiError):
    """The token's role or namespaces do not allow this operation."""

    code = "forbidden"


class NotFoundError(ApiError):
    """The named resource does not exist."""

    code = "not_found"


class ConflictError(ApiError):
    """The request clashes with current state (duplicate name, illegal stage transition)."""

    code = "conflict"


class PayloadTooLargeError(ApiError):
    """The upload exceeds the server's size limit."""

    code = "payload_too_large"


class RangeNotSatisfiableError(ApiError):
    """The requested byte range lies outside the blob."""

    code = "range_not_satisfiable"


class ValidationError(ApiError):
    """The server rejected the request body or parameters; ``details`` lists the fields."""

    code = "validation_error"


class RateLimitedError(ApiError):
    """The server asks us to slow down."""

    code = "rate_limited"


_BY_CODE: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (
        BadRequestError,
        DigestMismatchError,
        UnauthenticatedError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        RangeNotSatisfiableError,
        ValidationError,
        RateLimitedError,
    )
}
_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: UnauthenticatedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    416: RangeNotSatisfiableError,
    422: ValidationError,
    429: RateLimitedError,
}


def api_error(status: int, body: Any) -> ApiError:
    """Build the right ApiError from a status and a (possibly non-conforming) error body."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        code, message, details = err["code"], str(err.get("message", "")), err.get("details")
    else:
        code, message, details = None, f"unexpected HTTP {status} response", None
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status, ApiError)
    return cls(message, code=code, status=status, details=details)
