"""Domain errors and their one rendering: RFC 9457 problem details."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import exc as sa_exc
from sqlalchemy import make_url
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = "1"
STATEMENT_TIMEOUT_TYPE = "urn:blogapi:problem:statement-timeout"
"""The problem type of a 503 for a statement cut off at STATEMENT_TIMEOUT_MS."""
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))  # RFC 9110 9.2.1: they change nothing


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
    type_: str = "about:blank",
) -> JSONResponse:
    problem = Problem(
        type=type_, title=HTTPStatus(status).phrase, status=status, detail=detail, errors=errors
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
    if exc.status_code == HTTPStatus.BAD_REQUEST and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI answers 400 to a JSON body that is not UTF-8 (422 to one that is not JSON).
        error = FieldError(loc=["body"], msg="JSON decode error: the body is not UTF-8", type="json_invalid")
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
        headers["Allow"] = ", ".join(sorted(allowed))
    return problem_response(exc.status_code, str(exc.detail), headers=headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Pydantic's errors carry the submitted value ("input"), for a missing field the whole
    # body, password included: only where and what is reported, never the value.
    errors: list[FieldError] = []
    for error in exc.errors():
        # A PATCH field is `T | None` (None meaning "not sent"): pydantic reports which
        # union member failed, and that None did not fit either. The client needs neither.
        if error["type"] == "none_required":
            continue
        loc = [part for part in error["loc"] if isinstance(part, int) or not _is_union_member(part)]
        field_error = FieldError(loc=loc, msg=error["msg"], type=error["type"])
        if field_error not in errors:
            errors.append(field_error)
    return problem_response(HTTPStatus.UNPROCESSABLE_ENTITY, "the request is not valid", errors=errors)


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


def database_cause(request: Request, exc: BaseException) -> str:
    """What the database or its driver said, for the log: its class and message.

    The driver's own error, not SQLAlchemy's wrapper (which appends the statement and its
    parameters), with the database password, the secret key and the statement's text
    parameters masked wherever the message repeats them.
    """
    error = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    message = " ".join(str(error).split())[:500]
    settings = getattr(request.app.state, "settings", None)
    hidden = set(_parameter_texts(exc.params if isinstance(exc, sa_exc.StatementError) else None))
    if settings is not None:
        hidden |= {settings.secret_key.get_secret_value(), make_url(settings.database_url).password or ""}
    for text in sorted(hidden, key=len, reverse=True):
        if len(text) >= 4:  # shorter ones would mask words of the message, and hide little
            message = message.replace(text, "***")
    return f"{error.__class__.__name__}: {message}" if message else error.__class__.__name__


def _parameter_texts(parameters: object) -> Iterator[str]:
    if isinstance(parameters, Mapping):
        parameters = list(parameters.values())
    if isinstance(parameters, list | tuple):
        for parameter in parameters:
            yield from _parameter_texts(parameter)
    elif isinstance(parameters, str):
        yield parameters
    elif isinstance(parameters, bytes):
        yield parameters.decode(errors="replace")


async def _pool_timeout(request: Request, exc: Exception) -> JSONResponse:
    logger.error(
        "database pool exhausted on %s %s: %s", request.method, request.url.path, database_cause(request, exc)
    )
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


def is_retryable_disconnect(exc: sa_exc.DBAPIError, method: str) -> bool:
    """The connection was lost where running the whole request again cannot store anything twice.

    Either way the pool has dropped it and every connection as old. Before COMMIT nothing
    of the transaction is stored (reads are autocommit and change nothing), so the whole
    request may run again: this is how a pooled connection that died while idle (a
    database restart, an idle timeout) is replaced without failing anyone's request. A
    failed COMMIT has no statement; its outcome is unknown, and only the client may retry,
    unless the request is a read: a safe method stores nothing, so it runs again whatever
    was lost (on MariaDB a KILL often lands on the ROLLBACK that ends a read's transaction).
    """
    return exc.connection_invalidated and (exc.statement is not None or method in SAFE_METHODS)


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
    return _retry_later(request, f"stale version: {database_cause(request, exc)}")


def is_statement_timeout(exc: sa_exc.DBAPIError) -> bool:
    """A statement cut off at the time limit (db.create_engine sets it per connection)."""
    error = exc.orig
    if getattr(error, "sqlstate", None) == "57014":  # PostgreSQL: canceling statement
        return True
    arguments = getattr(error, "args", ())
    if arguments and arguments[0] == 1969:  # MariaDB: max_statement_time exceeded
        return True
    return isinstance(exc, sa_exc.OperationalError) and str(error) == "interrupted"  # SQLite


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, sa_exc.DBAPIError)
    if is_statement_timeout(exc):
        # Never retried: a statement that ran out of time would run out of it again, and
        # each attempt would add its load to whatever made it slow.
        logger.warning(
            "statement timeout on %s %s: %s", request.method, request.url.path, database_cause(request, exc)
        )
        return problem_response(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "the request took too long in the database; retry shortly",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
            type_=STATEMENT_TIMEOUT_TYPE,
        )
    if is_transient(exc):
        return _retry_later(request, database_cause(request, exc))
    if is_retryable_disconnect(exc, request.method):
        return _retry_later(
            request,
            database_cause(request, exc),
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
        "database unavailable on %s %s: %s", request.method, request.url.path, database_cause(request, exc)
    )
    return _service_unavailable("the database is unavailable; retry shortly")


async def _connection_error(request: Request, exc: Exception) -> JSONResponse:
    # Some drivers (asyncpg when connecting) raise the socket's error unwrapped.
    if not isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return await _unexpected_error(request, exc)
    logger.error(
        "database connection failed on %s %s: %s",
        request.method,
        request.url.path,
        database_cause(request, exc),
    )
    return _service_unavailable("the database is unavailable; retry shortly")


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(HTTPStatus.INTERNAL_SERVER_ERROR, "an unexpected error occurred")


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
        Exception: _unexpected_error,
    }
    for exc_class, handler in handlers.items():
        app.add_exception_handler(exc_class, handler)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem responses a route can return."""
    return {status: {"model": Problem, "description": HTTPStatus(status).phrase} for status in statuses}
