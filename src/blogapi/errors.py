"""Domain errors and their one rendering: RFC 9457 problem details."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = "1"
# A 422 lists this many field errors at most, and counts the rest: each costs the client
# nothing to send (an unknown key is a few bytes) but the server work to report.
ERRORS_LISTED_MAX = 100
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "type": "about:blank",
                "title": "Not Found",
                "status": 404,
                "detail": "post 7 not found",
            }
        }
    )

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
    errors_omitted: int | None = None
    """How many more field errors the request had than `errors` lists (at most ERRORS_LISTED_MAX)."""


class DomainError(Exception):
    """An error a client can cause; services raise these and never `HTTPException`."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    default_headers: ClassVar[Mapping[str, str]] = {}

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(self.default_headers)


class NotFound(DomainError):
    status = HTTPStatus.NOT_FOUND


class Conflict(DomainError):
    status = HTTPStatus.CONFLICT


class Forbidden(DomainError):
    status = HTTPStatus.FORBIDDEN


class Unauthorized(DomainError):
    status = HTTPStatus.UNAUTHORIZED
    default_headers: ClassVar[Mapping[str, str]] = {"WWW-Authenticate": "Bearer"}


class PreconditionFailed(DomainError):
    status = HTTPStatus.PRECONDITION_FAILED


class TooManyRequests(DomainError):
    status = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(max(1, retry_after))


class ServiceUnavailable(DomainError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    default_headers: ClassVar[Mapping[str, str]] = {"Retry-After": RETRY_AFTER_SECONDS}


class InvalidInput(DomainError):
    """Input that passed the schema but cannot be used (a tampered cursor, say)."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class PayloadTooLarge(StarletteHTTPException):
    """Raised while a request body is read, so FastAPI passes it through unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body exceeds {limit} bytes")


def problem_response(
    status: int,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    errors: list[FieldError] | None = None,
    errors_omitted: int | None = None,
) -> JSONResponse:
    problem = Problem(
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        errors=errors,
        errors_omitted=errors_omitted,
    )
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _service_unavailable(detail: str) -> JSONResponse:
    return problem_response(
        HTTPStatus.SERVICE_UNAVAILABLE, detail, headers={"Retry-After": RETRY_AFTER_SECONDS}
    )


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return problem_response(exc.status, exc.detail, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == HTTPStatus.BAD_REQUEST and (msg := _unparsable_json(exc.__cause__)):
        # FastAPI answers 400 to a JSON body it cannot decode for other reasons than syntax
        # (422 to one that is not JSON): it is malformed JSON all the same.
        error = FieldError(loc=["body"], msg=f"JSON decode error: {msg}", type="json_invalid")
        return problem_response(HTTPStatus.UNPROCESSABLE_ENTITY, "the request is not valid", errors=[error])
    headers = dict(exc.headers or {})
    if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        # Starlette names the methods of the first route matching the path; a path has
        # one route per method here, so ask every route about every method.
        allowed = {
            method
            for method in _METHODS
            if any(
                route.matches({**request.scope, "method": method})[0] is Match.FULL
                for route in request.app.router.routes
            )
        }
        if "GET" in allowed:  # answered by the GET route (middleware.RetryTransientErrors)
            allowed.add("HEAD")
        headers["Allow"] = ", ".join(sorted(allowed))
    return problem_response(exc.status_code, str(exc.detail), headers=headers)


def _unparsable_json(cause: BaseException | None) -> str | None:
    """Why `json.loads` refused a body, for the errors FastAPI does not report as 422."""
    if isinstance(cause, UnicodeDecodeError):
        return "the body is not UTF-8"
    if isinstance(cause, RecursionError):
        return "the body is nested too deeply"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return "a number has too many digits"  # over Python's limit (sys.get_int_max_str_digits)
    return None


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Pydantic's errors carry the submitted value ("input"), for a missing field the whole
    # body, password included: only where and what is reported, never the value.
    errors: list[FieldError] = []
    seen: set[tuple[tuple[str | int, ...], str, str]] = set()
    omitted = 0
    for error in exc.errors():
        # A PATCH field is `T | None` (None meaning "not sent"): pydantic reports which
        # union member failed, and that None did not fit either. The client needs neither.
        if error["type"] == "none_required":
            continue
        loc = tuple(part for part in error["loc"] if isinstance(part, int) or not _is_union_member(part))
        # A set, not a scan of the list: a body of thousands of unknown keys is thousands
        # of errors, and the cost of a request must stay linear in its size.
        key = (loc, error["msg"], error["type"])
        if key in seen:
            continue
        seen.add(key)
        if len(errors) < ERRORS_LISTED_MAX:
            errors.append(FieldError(loc=list(loc), msg=error["msg"], type=error["type"]))
        else:
            omitted += 1
    return problem_response(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "the request is not valid",
        errors=errors,
        errors_omitted=omitted or None,
    )


def _is_union_member(part: str) -> bool:
    return "[" in part or part in ("none", "str", "int", "bool", "list")


async def _integrity_error(request: Request, exc: Exception) -> JSONResponse:
    # Services map the constraints they expect; reaching here means a race they did not.
    logger.warning("integrity error on %s %s: %s", request.method, request.url.path, exc.__class__)
    return problem_response(HTTPStatus.CONFLICT, "the request conflicts with the current state")


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # Input the schemas let through but the database refused: a validation gap to close.
    logger.warning("data error on %s %s: %s", request.method, request.url.path, exc.__class__)
    return problem_response(HTTPStatus.UNPROCESSABLE_ENTITY, "a value is out of range for storage")


async def _pool_timeout(request: Request, exc: Exception) -> JSONResponse:
    logger.error("database pool exhausted on %s %s", request.method, request.url.path)
    return _service_unavailable("the service is busy; retry shortly")


def is_transient(exc: sa_exc.DBAPIError) -> bool:
    """A deadlock, serialization failure or lock timeout: the whole transaction may succeed again."""
    error = exc.orig
    if getattr(error, "sqlstate", None) in ("40001", "40P01"):  # PostgreSQL
        return True
    arguments = getattr(error, "args", ())
    if arguments and arguments[0] in (1205, 1213):  # MariaDB lock wait timeout, deadlock
        return True
    return "database is locked" in str(error)  # SQLite past its busy timeout


def is_retryable_disconnect(exc: sa_exc.DBAPIError) -> bool:
    """The connection was lost while a statement ran, not while a transaction committed.

    Either way the pool has dropped it and every connection as old. Before COMMIT nothing
    of the transaction is stored (reads are autocommit and change nothing), so the whole
    request may run again: this is how a pooled connection that died while idle (a
    database restart, an idle timeout) is replaced without failing anyone's request. A
    failed COMMIT has no statement; its outcome is unknown, and only the client may retry.
    """
    return exc.connection_invalidated and exc.statement is not None


def _retry_later(
    request: Request,
    cause: str,
    *,
    what: str = "transient conflict",
    detail: str = "the request conflicted with concurrent ones; retry shortly",
) -> JSONResponse:
    # The retry middleware runs the request again while it may; this 503 is what the
    # client gets once it may not.
    request.state.retry_transaction = True
    logger.warning("%s on %s %s: %s", what, request.method, request.url.path, cause)
    return _service_unavailable(detail)


async def _stale_data(request: Request, exc: Exception) -> JSONResponse:
    # A concurrent request changed the row between our read and our write.
    if "if-match" in request.headers:
        return problem_response(HTTPStatus.PRECONDITION_FAILED, "the resource has changed; GET it again")
    return _retry_later(request, "stale version")


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, sa_exc.DBAPIError)
    if is_transient(exc):
        return _retry_later(request, exc.orig.__class__.__name__)
    if is_retryable_disconnect(exc):
        return _retry_later(
            request,
            exc.orig.__class__.__name__,
            what="database connection lost",
            detail="the database is unavailable; retry shortly",
        )
    if str(getattr(exc.orig, "sqlstate", "") or "").startswith("22"):
        # A data exception asyncpg raises under its generic class (NUL in text: 22021).
        return await _data_error(request, exc)
    # SQLSTATE class 08 (connection), 57P0x (shutting down, starting up), 53300 (too many
    # connections): asyncpg raises these, e.g. during a restart, as plain DBAPIErrors.
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    unavailable = sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03", "53300")
    if not (
        unavailable
        or exc.connection_invalidated
        or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    ):
        return await _unexpected_error(request, exc)
    logger.error(
        "database unavailable on %s %s: %s", request.method, request.url.path, exc.orig.__class__.__name__
    )
    return _service_unavailable("the database is unavailable; retry shortly")


async def _connection_error(request: Request, exc: Exception) -> JSONResponse:
    # Some drivers (asyncpg when connecting) raise the socket's error unwrapped.
    if not isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return await _unexpected_error(request, exc)
    logger.error("database connection failed on %s %s: %r", request.method, request.url.path, exc)
    return _service_unavailable("the database is unavailable; retry shortly")


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(HTTPStatus.INTERNAL_SERVER_ERROR, "an unexpected error occurred")


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's outermost layer sends this one, past every middleware of ours.
    response = await _unexpected_error(request, exc)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def install_error_handlers(app: FastAPI) -> None:
    handlers: dict[type[Exception], Any] = {
        DomainError: _domain_error,
        StarletteHTTPException: _http_error,
        RequestValidationError: _validation_error,
        sa_exc.IntegrityError: _integrity_error,
        sa_exc.DataError: _data_error,
        sa_exc.TimeoutError: _pool_timeout,
        sa_exc.DBAPIError: _database_unavailable,
        StaleDataError: _stale_data,
        OSError: _connection_error,
        Exception: _server_error,
    }
    for exc_class, handler in handlers.items():
        app.add_exception_handler(exc_class, handler)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem responses a route can return."""
    return {status: {"model": Problem, "description": HTTPStatus(status).phrase} for status in statuses}
