"""Server errors: one hierarchy, one JSON shape.

    ServerError                      (500 internal_error)
    ├── BadRequestError              (400 bad_request)
    │   └── DigestMismatchError      (400 digest_mismatch)
    ├── UnauthenticatedError         (401 unauthenticated)
    ├── ForbiddenError               (403 forbidden)
    ├── NotFoundError                (404 not_found)
    ├── MethodNotAllowedError        (405 method_not_allowed)
    ├── ConflictError                (409 conflict)
    ├── PreconditionFailedError      (412 precondition_failed)
    ├── PayloadTooLargeError         (413 payload_too_large)
    ├── RangeNotSatisfiableError     (416 range_not_satisfiable)
    ├── ValidationFailedError        (422 validation_error)
    ├── DatabaseBusyError            (503 database_busy)
    └── StoreUnavailableError        (503 store_unavailable)

Every response body for an error is ``{"error": {"code", "message", "details"}}``;
`install_error_handlers` maps our errors, FastAPI's validation errors, Starlette's
HTTP exceptions (unknown routes, wrong methods) and anything unexpected onto it.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("ferry.server")


class ServerError(Exception):
    """Base of every error the server answers with; carries a stable code."""

    code = "internal_error"
    status = 500

    def __init__(
        self,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers


class BadRequestError(ServerError):
    """The request is well-formed JSON but makes no sense."""

    code, status = "bad_request", 400


class DigestMismatchError(BadRequestError):
    """Uploaded bytes do not hash to the digest named in the URL."""

    code = "digest_mismatch"


class UnauthenticatedError(ServerError):
    """No token, or a token we do not know (or revoked/expired)."""

    code, status = "unauthenticated", 401


class ForbiddenError(ServerError):
    """The token is valid but its role or namespaces do not allow this."""

    code, status = "forbidden", 403


class NotFoundError(ServerError):
    """The named resource does not exist."""

    code, status = "not_found", 404


class MethodNotAllowedError(ServerError):
    """The path exists but not with this method."""

    code, status = "method_not_allowed", 405


class ConflictError(ServerError):
    """The request clashes with current state (duplicate, illegal transition)."""

    code, status = "conflict", 409


class PreconditionFailedError(ServerError):
    """An ``If-Match`` (or ``If-None-Match`` on a write) does not hold for the resource."""

    code, status = "precondition_failed", 412


class PayloadTooLargeError(ServerError):
    """The upload exceeds the configured size limit."""

    code, status = "payload_too_large", 413


class RangeNotSatisfiableError(ServerError):
    """The requested byte range lies outside the blob."""

    code, status = "range_not_satisfiable", 416


class ValidationFailedError(ServerError):
    """The request body or parameters fail validation."""

    code, status = "validation_error", 422


class DatabaseBusyError(ServerError):
    """The database's write lock stayed taken too long; the client should retry shortly."""

    code, status = "database_busy", 503


class StoreUnavailableError(ServerError):
    """The blob store (e.g. an S3 endpoint) failed or is unreachable; retry shortly."""

    code, status = "store_unavailable", 503


_STATUS_ERRORS: dict[int, type[ServerError]] = {
    400: BadRequestError,
    401: UnauthenticatedError,
    403: ForbiddenError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    409: ConflictError,
    412: PreconditionFailedError,
    413: PayloadTooLargeError,
    416: RangeNotSatisfiableError,
    422: ValidationFailedError,
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one error shape, also used by the OpenAPI schema of error responses."""
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(exc: ServerError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details), status_code=exc.status, headers=exc.headers
    )


async def _on_server_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServerError)
    return error_response(exc)


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {
            "loc": [str(p) for p in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]
    return error_response(
        ValidationFailedError("request validation failed; see details", {"errors": problems})
    )


async def _on_http_exception(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = _STATUS_ERRORS.get(exc.status_code, ServerError)
    err = kind(str(exc.detail), headers=getattr(exc, "headers", None))
    err.status = exc.status_code
    return error_response(err)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, OperationalError) and "locked" in str(exc.orig):
        # Another process held SQLite's write lock past the busy timeout: contention, not a bug.
        log.warning("database busy on %s %s: %s", request.method, request.url.path, exc.orig)
        return error_response(
            DatabaseBusyError("the database is busy; retry shortly", headers={"Retry-After": "2"})
        )
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(ServerError("internal server error; see the server log"))


def install_error_handlers(app: FastAPI) -> None:
    """Route every kind of failure into the one JSON error shape."""
    app.add_exception_handler(ServerError, _on_server_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)
