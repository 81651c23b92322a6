"""Mapping of failures to HTTP answers, all in one place: clear JSON errors, never a bare
500. Service refusals and store failures are mapped by class in :data:`STATUS`.

Validation errors echo the offending input, as FastAPI does; that input may hold what JSON
cannot carry (a lone surrogate from a ``\\udXXX`` escape, an infinite float from ``1e400``,
raw bytes). It is made safe before it is written, so hostile input gets its 422 instead of
crashing the error handler.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from putplace import telemetry
from putplace.blobs.base import (
    BlobTooLargeError,
    InvalidBlobNameError,
    StorageFullError,
    StorageUnavailableError,
)
from putplace.digest import INVALID_SHA256
from putplace.metadata import DuplicateError, StoreUnavailableError
from putplace.server.multipart import MissingFieldError, MultipartError
from putplace.service.errors import (
    BusyError,
    ChecksumMismatchError,
    ConflictError,
    ContentMismatchError,
    ForbiddenError,
    GoneError,
    HashMismatchError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    RateLimitedError,
    SizeMismatchError,
    StalledError,
    TooLargeError,
    UnauthenticatedError,
)
from putplace.service.quotas import QuotaExceededError

log = logging.getLogger("putplace.server")

#: Longest input string echoed back in a validation error.
MAX_ECHO_CHARS = 1024
#: Longest Content-Type echoed back when a body is refused for its type.
MAX_SHOWN_TYPE = 100
#: Levels of an input echoed back in an error; deeper ones become "...".
MAX_ECHO_DEPTH = 32

#: What the log and metrics show for a request whose client left before its body was
#: whole: a client's doing, counted as 400, not a server error.
DISCONNECTED = "client disconnected before the whole request body arrived"


def json_safe(value: Any, depth: int = 0) -> Any:
    """*value* with every string valid UTF-8 (lone surrogates replaced), long strings cut,
    non-finite floats as strings, bytes decoded and nesting cut below MAX_ECHO_DEPTH; safe
    for any JSON encoder (a body nested 1,000 deep, echoed whole, overflowed the stack)."""
    if isinstance(value, str):
        if len(value) > MAX_ECHO_CHARS:
            value = value[:MAX_ECHO_CHARS] + "..."
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, bytes):
        return json_safe(value.decode("utf-8", "replace"))
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict | list | tuple) and depth >= MAX_ECHO_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {json_safe(str(k)): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, depth + 1) for v in value]
    return value


class PreconditionFailedError(InvalidInputError):
    """A request for another version of a protocol (a tus client of another version)."""


class UnsupportedMediaTypeError(InvalidInputError):
    """A body of a type the endpoint does not take."""


#: Status code per refusal, the message being the exception's own. Subclasses inherit.
STATUS: dict[type[Exception], int] = {
    PreconditionFailedError: status.HTTP_412_PRECONDITION_FAILED,
    UnsupportedMediaTypeError: status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    ChecksumMismatchError: 460,  # tus's "Checksum Mismatch"; before its base class
    GoneError: status.HTTP_410_GONE,
    OverloadedError: status.HTTP_503_SERVICE_UNAVAILABLE,  # before its base class
    BusyError: status.HTTP_423_LOCKED,
    InvalidInputError: status.HTTP_400_BAD_REQUEST,
    ContentMismatchError: status.HTTP_400_BAD_REQUEST,
    MultipartError: status.HTTP_400_BAD_REQUEST,
    InvalidBlobNameError: status.HTTP_400_BAD_REQUEST,
    UnauthenticatedError: status.HTTP_401_UNAUTHORIZED,
    ForbiddenError: status.HTTP_403_FORBIDDEN,
    NotFoundError: status.HTTP_404_NOT_FOUND,
    StalledError: status.HTTP_408_REQUEST_TIMEOUT,
    DuplicateError: status.HTTP_409_CONFLICT,
    ConflictError: status.HTTP_409_CONFLICT,
    TooLargeError: status.HTTP_413_CONTENT_TOO_LARGE,
    BlobTooLargeError: status.HTTP_413_CONTENT_TOO_LARGE,
    RateLimitedError: status.HTTP_429_TOO_MANY_REQUESTS,
}


#: The reason an upload refused for its content is counted under (``telemetry``).
REFUSAL_REASONS: dict[type[Exception], str] = {
    ChecksumMismatchError: "checksum_mismatch",
    HashMismatchError: "hash_mismatch",
    SizeMismatchError: "size_mismatch",
    TooLargeError: "too_large",
    BlobTooLargeError: "too_large",
    QuotaExceededError: "quota",
    StalledError: "stalled",
}


def _count(exc: Exception) -> None:
    if isinstance(exc, RateLimitedError):
        telemetry.RATE_LIMITED.inc()
        return
    reason = next((r for kind, r in REFUSAL_REASONS.items() if isinstance(exc, kind)), None)
    if reason is not None:
        telemetry.UPLOADS_REFUSED.labels(reason).inc()


def _headers(exc: Exception) -> dict[str, str] | None:
    if isinstance(exc, UnauthenticatedError):
        return {"WWW-Authenticate": "X-API-Key"}
    if isinstance(exc, RateLimitedError | BusyError):
        return {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, PreconditionFailedError):
        return {"Tus-Version": "1.0.0"}
    return None


def _not_json_detail(content_type: str | None) -> str:
    if content_type is None:
        declared = "no Content-Type"
    else:
        cut = content_type[:MAX_SHOWN_TYPE] + ("..." if len(content_type) > MAX_SHOWN_TYPE else "")
        declared = repr(cut)
    return (
        f"the body must be JSON, sent with Content-Type: application/json; this request "
        f"declared {declared}"
    )


def _body_left_unparsed(exc: RequestValidationError) -> bool:
    """Whether FastAPI handed a declared body on as its raw bytes: what it does when
    the request's Content-Type is not JSON or is missing (``curl -d`` sends a form
    type). Without this, the answer is a 422 saying the body "should be a valid
    dictionary", which does not name the cause. (Bodies are not parsed whatever their
    type, as FastAPI's strict content type keeps a browser's form post from being taken
    for JSON.) A JSON string is parsed input, not bytes: ``"abc"`` sent to a route that
    parses its own body (``/put_file``) keeps its 422."""
    return any(
        tuple(error.get("loc", ())) == ("body",) and isinstance(error.get("input"), bytes)
        for error in exc.errors()
    )


def install_error_handlers(app: FastAPI) -> None:
    async def refused(request: Request, exc: Exception) -> JSONResponse:
        code = next(code for kind, code in STATUS.items() if isinstance(exc, kind))
        _count(exc)
        detail = INVALID_SHA256 if isinstance(exc, InvalidBlobNameError) else str(exc)
        headers = _headers(exc) or {}
        if request.url.path.startswith("/tus"):  # tus answers say which protocol, always
            headers["Tus-Resumable"] = "1.0.0"
        return JSONResponse({"detail": detail}, status_code=code, headers=headers)

    async def missing_field(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, MissingFieldError)
        missing = {"type": "missing", "loc": ["body", exc.name], "msg": "Field required"}
        return JSONResponse(
            {"detail": [{**missing, "input": None}]},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    async def disconnected(_: Request, exc: Exception) -> JSONResponse:
        # Nobody reads this answer; it keeps the access log honest.
        return JSONResponse({"detail": DISCONNECTED}, status_code=status.HTTP_400_BAD_REQUEST)

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if _body_left_unparsed(exc):
            declared = request.headers.get("content-type") or None  # empty: none, as FastAPI
            return JSONResponse(
                {"detail": _not_json_detail(declared)},
                status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            )
        errors = jsonable_encoder(json_safe(list(exc.errors())))
        return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    async def storage_full(_: Request, exc: Exception) -> JSONResponse:
        log.error("blob store full: %s", exc)
        return JSONResponse(
            {"detail": "Insufficient storage: the blob store is full"},
            status_code=status.HTTP_507_INSUFFICIENT_STORAGE,
        )

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.error("store unavailable: %s", exc)
        return JSONResponse(
            {"detail": f"Service temporarily unavailable: {exc}"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: answer in JSON with the request id so it can be found in
        # the log (uvicorn logs the traceback).
        request_id = request.scope.get("state", {}).get("request_id")
        return JSONResponse(
            {"detail": "Internal server error", "request_id": request_id},
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(MissingFieldError, missing_field)
    app.add_exception_handler(ClientDisconnect, disconnected)
    for kind in STATUS:
        app.add_exception_handler(kind, refused)
    app.add_exception_handler(StorageFullError, storage_full)
    app.add_exception_handler(StorageUnavailableError, unavailable)
    app.add_exception_handler(StoreUnavailableError, unavailable)
