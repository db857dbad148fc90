"""Domain errors and their one rendering: RFC 9457 problem details."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from typing import Any, ClassVar

from asyncpg.exceptions import TargetServerAttributeNotMatched  # type: ignore[import-untyped]
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exc as sa_exc
from sqlalchemy import make_url
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from blogapi.logs import REQUEST_ID_HEADER, current_request_id

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = "1"
# A 422 lists this many field errors at most, and counts the rest: each costs the client
# nothing to send (an unknown key is a few bytes) but the server work to report.
ERRORS_LISTED_MAX = 100
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))  # RFC 9110 9.2.1: they change nothing


PROBLEM_TYPE_BASE = "https://blogapi.dev/problems/"


class ProblemType(StrEnum):
    """Every kind of error, as the `type` URI of its problem details (docs/problems.md)."""

    VALIDATION_ERROR = PROBLEM_TYPE_BASE + "validation-error"
    INVALID_CURSOR = PROBLEM_TYPE_BASE + "invalid-cursor"
    IDEMPOTENCY_KEY_REUSED = PROBLEM_TYPE_BASE + "idempotency-key-reused"
    UNAUTHORIZED = PROBLEM_TYPE_BASE + "unauthorized"
    INVALID_CREDENTIALS = PROBLEM_TYPE_BASE + "invalid-credentials"
    ACCOUNT_DISABLED = PROBLEM_TYPE_BASE + "account-disabled"
    INVALID_REFRESH_TOKEN = PROBLEM_TYPE_BASE + "invalid-refresh-token"
    REFRESH_TOKEN_REUSED = PROBLEM_TYPE_BASE + "refresh-token-reused"
    FORBIDDEN = PROBLEM_TYPE_BASE + "forbidden"
    REAUTHENTICATION_REQUIRED = PROBLEM_TYPE_BASE + "reauthentication-required"
    NOT_FOUND = PROBLEM_TYPE_BASE + "not-found"
    METHOD_NOT_ALLOWED = PROBLEM_TYPE_BASE + "method-not-allowed"
    CONFLICT = PROBLEM_TYPE_BASE + "conflict"
    EMAIL_TAKEN = PROBLEM_TYPE_BASE + "email-taken"
    IDEMPOTENCY_KEY_IN_USE = PROBLEM_TYPE_BASE + "idempotency-key-in-use"
    PRECONDITION_FAILED = PROBLEM_TYPE_BASE + "precondition-failed"
    PAYLOAD_TOO_LARGE = PROBLEM_TYPE_BASE + "payload-too-large"
    TOO_MANY_REQUESTS = PROBLEM_TYPE_BASE + "too-many-requests"
    INTERNAL_ERROR = PROBLEM_TYPE_BASE + "internal-error"
    SERVICE_UNAVAILABLE = PROBLEM_TYPE_BASE + "service-unavailable"
    STATEMENT_TIMEOUT = PROBLEM_TYPE_BASE + "statement-timeout"
    CORS_REFUSED = PROBLEM_TYPE_BASE + "cors-refused"
    INVALID_RESET_TOKEN = PROBLEM_TYPE_BASE + "invalid-reset-token"
    INVALID_VERIFICATION_TOKEN = PROBLEM_TYPE_BASE + "invalid-verification-token"
    EMAIL_NOT_VERIFIED = PROBLEM_TYPE_BASE + "email-not-verified"

    @property
    def slug(self) -> str:
        return self.value.removeprefix(PROBLEM_TYPE_BASE)


@dataclass(frozen=True, slots=True)
class ProblemKind:
    status: HTTPStatus
    meaning: str
    example: str  # a `detail` this kind of error may carry


PROBLEM_KINDS: dict[ProblemType, ProblemKind] = {
    ProblemType.VALIDATION_ERROR: ProblemKind(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "The request does not fit the schema (or a value cannot be stored); `errors` says where and why.",
        "the request is not valid",
    ),
    ProblemType.INVALID_CURSOR: ProblemKind(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "The `cursor` is not a `next_cursor` this service issued for this list: start from the first page.",
        "the cursor is not one this service issued",
    ),
    ProblemType.IDEMPOTENCY_KEY_REUSED: ProblemKind(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "The `Idempotency-Key` was used before with a different request body: use a new key.",
        "this Idempotency-Key was used with a different request body",
    ),
    ProblemType.UNAUTHORIZED: ProblemKind(
        HTTPStatus.UNAUTHORIZED,
        "The access token is missing, invalid or expired, or its session has ended (logout, a password"
        " change in another session, a reused refresh token).",
        "the access token is missing, invalid or expired",
    ),
    ProblemType.INVALID_CREDENTIALS: ProblemKind(
        HTTPStatus.UNAUTHORIZED,
        "Logging in failed: the email or the password is wrong (which one is not said).",
        "the email or password is incorrect",
    ),
    ProblemType.ACCOUNT_DISABLED: ProblemKind(
        HTTPStatus.UNAUTHORIZED,
        "The email and password are right, but an admin has disabled the account: it cannot log in.",
        "this account is disabled",
    ),
    ProblemType.INVALID_REFRESH_TOKEN: ProblemKind(
        HTTPStatus.UNAUTHORIZED,
        "The refresh token is unknown, or its session has ended or expired: log in again.",
        "the refresh token is unknown, or its session has ended: log in again",
    ),
    ProblemType.REFRESH_TOKEN_REUSED: ProblemKind(
        HTTPStatus.UNAUTHORIZED,
        "The refresh token was already traded for a new one, so a copy of it may have been stolen: its"
        " whole session is ended, for whoever holds the newer tokens too. Log in again. (Two refreshes"
        " at once with one token count as reuse: a client must send one at a time.)",
        "this refresh token was used before, so it may have been stolen: its session is ended",
    ),
    ProblemType.FORBIDDEN: ProblemKind(
        HTTPStatus.FORBIDDEN,
        "The caller may not do this to this resource (only its owner or an admin may).",
        "only the author or an admin may change this post",
    ),
    ProblemType.REAUTHENTICATION_REQUIRED: ProblemKind(
        HTTPStatus.FORBIDDEN,
        "Changing one's own password or email needs a recent login or the right `current_password`:"
        " ask the user for their password.",
        "changing your password or email needs a login in the last 10 minutes, or current_password",
    ),
    ProblemType.NOT_FOUND: ProblemKind(
        HTTPStatus.NOT_FOUND, "No such resource, or no such route.", "post 7 not found"
    ),
    ProblemType.METHOD_NOT_ALLOWED: ProblemKind(
        HTTPStatus.METHOD_NOT_ALLOWED,
        "The route exists, but not for this method; `Allow` lists the methods it has.",
        "Method Not Allowed",
    ),
    ProblemType.CONFLICT: ProblemKind(
        HTTPStatus.CONFLICT,
        "The request conflicts with the current state, changed by a concurrent request: read it again.",
        "the request conflicts with the current state",
    ),
    ProblemType.EMAIL_TAKEN: ProblemKind(
        HTTPStatus.CONFLICT, "Another account has this email.", "an account with this email already exists"
    ),
    ProblemType.IDEMPOTENCY_KEY_IN_USE: ProblemKind(
        HTTPStatus.CONFLICT,
        "A request with this `Idempotency-Key` is still in progress: retry shortly.",
        "a request with this Idempotency-Key is still in progress; retry shortly",
    ),
    ProblemType.PRECONDITION_FAILED: ProblemKind(
        HTTPStatus.PRECONDITION_FAILED,
        "`If-Match` names a version the resource is no longer at: GET it again, then retry.",
        "the resource has changed since you read it; GET it again",
    ),
    ProblemType.PAYLOAD_TOO_LARGE: ProblemKind(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        "The request body is over the size limit (`MAX_BODY_BYTES`).",
        "request body exceeds 1048576 bytes",
    ),
    ProblemType.TOO_MANY_REQUESTS: ProblemKind(
        HTTPStatus.TOO_MANY_REQUESTS,
        "Too many failed logins for this account or from this address (or sign-ups, password reset"
        " requests or verification mails): retry after `Retry-After` seconds.",
        "too many failed logins; try again later",
    ),
    ProblemType.INTERNAL_ERROR: ProblemKind(
        HTTPStatus.INTERNAL_SERVER_ERROR,
        "A bug on our side; it was logged. Nothing about it is revealed.",
        "an unexpected error occurred",
    ),
    ProblemType.SERVICE_UNAVAILABLE: ProblemKind(
        HTTPStatus.SERVICE_UNAVAILABLE,
        "The database is unavailable or busy, or the request kept conflicting with concurrent ones:"
        " retry after `Retry-After` seconds.",
        "the database is unavailable; retry shortly",
    ),
    ProblemType.STATEMENT_TIMEOUT: ProblemKind(
        HTTPStatus.SERVICE_UNAVAILABLE,
        "A statement ran past `STATEMENT_TIMEOUT_MS` and the database cut it off: retry after"
        " `Retry-After` seconds, or ask for less (a narrower filter, a smaller page).",
        "the request took too long in the database; retry shortly",
    ),
    ProblemType.CORS_REFUSED: ProblemKind(
        HTTPStatus.BAD_REQUEST,
        "A CORS preflight asked for an origin, method or header this service does not allow"
        " (`CORS_ORIGINS`); the browser will not send the request.",
        "disallowed CORS origin",
    ),
    ProblemType.INVALID_RESET_TOKEN: ProblemKind(
        HTTPStatus.BAD_REQUEST,
        "The password reset token is unknown, used or expired (or the account's email changed since"
        " it was sent): ask for a new one at `POST /auth/password-reset`.",
        "the reset token is unknown, used or expired: ask for a new one",
    ),
    ProblemType.INVALID_VERIFICATION_TOKEN: ProblemKind(
        HTTPStatus.BAD_REQUEST,
        "The email verification token is unknown, used or expired, or its address is no longer the"
        " account's: ask for a new one at `POST /auth/verify/resend`.",
        "the verification token is unknown, used or expired: ask for a new one",
    ),
    ProblemType.EMAIL_NOT_VERIFIED: ProblemKind(
        HTTPStatus.FORBIDDEN,
        "With `REQUIRE_VERIFIED_EMAIL`, an account publishes only once its email is verified: use"
        " the token mailed to it at `POST /auth/verify` (`POST /auth/verify/resend` mails a new one).",
        "verify your email address before publishing",
    ),
}

# The kind of an error known only by its status (a framework's error, a handler's response).
_KIND_OF_STATUS: dict[int, ProblemType] = {}
for _problem_type, _kind in PROBLEM_KINDS.items():
    if _problem_type not in (
        ProblemType.CORS_REFUSED,
        ProblemType.INVALID_RESET_TOKEN,
        ProblemType.INVALID_VERIFICATION_TOKEN,
    ):  # named where they happen; other 400s are the HTTP layer's
        _KIND_OF_STATUS.setdefault(_kind.status, _problem_type)


def _problem_type_description() -> str:
    lines = [
        "What kind of error this is, to act on without parsing `detail`. One of the following"
        " (or `about:blank` for a status that has no more specific kind):",
        "",
    ]
    lines += [f"- `{kind}` ({info.status}): {info.meaning}" for kind, info in PROBLEM_KINDS.items()]
    return "\n".join(lines)


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "type": ProblemType.NOT_FOUND,
                "title": "Not Found",
                "status": 404,
                "detail": "post 7 not found",
                "request_id": "5f0c4c3a9e1d2b7a6c8e0f12",
            }
        }
    )

    type: str = Field(description=_problem_type_description())
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
    errors_omitted: int | None = None
    """How many more field errors the request had than `errors` lists (at most ERRORS_LISTED_MAX)."""
    request_id: str | None = Field(
        default=None,
        description=f"The request's id, also in its `{REQUEST_ID_HEADER}` response header and in"
        " every line the service logged about it: quote it in a bug report.",
    )


class DomainError(Exception):
    """An error a client can cause; services raise these and never `HTTPException`."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    type: ClassVar[ProblemType] = ProblemType.INTERNAL_ERROR
    default_headers: ClassVar[Mapping[str, str]] = {}

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(self.default_headers)


class NotFound(DomainError):
    status = HTTPStatus.NOT_FOUND
    type = ProblemType.NOT_FOUND


class Conflict(DomainError):
    status = HTTPStatus.CONFLICT
    type = ProblemType.CONFLICT


class EmailTaken(Conflict):
    type = ProblemType.EMAIL_TAKEN


class IdempotencyKeyInUse(Conflict):
    type = ProblemType.IDEMPOTENCY_KEY_IN_USE


class Forbidden(DomainError):
    status = HTTPStatus.FORBIDDEN
    type = ProblemType.FORBIDDEN


class ReauthenticationRequired(Forbidden):
    type = ProblemType.REAUTHENTICATION_REQUIRED


class EmailNotVerified(Forbidden):
    type = ProblemType.EMAIL_NOT_VERIFIED


class InvalidMailToken(DomainError):
    """A token from a mail that cannot be used (unknown, used, expired)."""

    status = HTTPStatus.BAD_REQUEST
    type = ProblemType.INVALID_RESET_TOKEN


class InvalidResetToken(InvalidMailToken):
    type = ProblemType.INVALID_RESET_TOKEN


class InvalidVerificationToken(InvalidMailToken):
    type = ProblemType.INVALID_VERIFICATION_TOKEN


class Unauthorized(DomainError):
    status = HTTPStatus.UNAUTHORIZED
    type = ProblemType.UNAUTHORIZED
    default_headers: ClassVar[Mapping[str, str]] = {"WWW-Authenticate": "Bearer"}


class InvalidCredentials(Unauthorized):
    type = ProblemType.INVALID_CREDENTIALS


class AccountDisabled(Unauthorized):
    type = ProblemType.ACCOUNT_DISABLED


class InvalidRefreshToken(Unauthorized):
    type = ProblemType.INVALID_REFRESH_TOKEN


class RefreshTokenReused(InvalidRefreshToken):
    type = ProblemType.REFRESH_TOKEN_REUSED


class PreconditionFailed(DomainError):
    status = HTTPStatus.PRECONDITION_FAILED
    type = ProblemType.PRECONDITION_FAILED


class TooManyRequests(DomainError):
    status = HTTPStatus.TOO_MANY_REQUESTS
    type = ProblemType.TOO_MANY_REQUESTS

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(max(1, retry_after))


class ServiceUnavailable(DomainError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    type = ProblemType.SERVICE_UNAVAILABLE
    default_headers: ClassVar[Mapping[str, str]] = {"Retry-After": RETRY_AFTER_SECONDS}


class InvalidInput(DomainError):
    """Input that passed the schema but cannot be used."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    type = ProblemType.VALIDATION_ERROR


class InvalidCursor(InvalidInput):
    type = ProblemType.INVALID_CURSOR


class IdempotencyKeyReused(InvalidInput):
    type = ProblemType.IDEMPOTENCY_KEY_REUSED


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
    problem_type: ProblemType | None = None,
    errors_omitted: int | None = None,
) -> JSONResponse:
    """A problem+json response; `problem_type` defaults to the general kind of `status`."""
    kind: str = problem_type or _KIND_OF_STATUS.get(status) or "about:blank"
    problem = Problem(
        type=kind,
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        errors=errors,
        errors_omitted=errors_omitted,
        request_id=current_request_id(),
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


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    request.state.problem_type = exc.type  # for the metrics (login failures)
    return problem_response(exc.status, exc.detail, headers=exc.headers, problem_type=exc.type)


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


def _note_unavailable(request: Request, cause: str) -> None:
    """Why the response is a 503, for the access log and the metrics (observe.py)."""
    request.state.unavailable_cause = cause


async def _pool_timeout(request: Request, exc: Exception) -> JSONResponse:
    _note_unavailable(request, "pool_exhausted")
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
    _note_unavailable(request, what.replace(" ", "_"))
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
        _note_unavailable(request, "statement_timeout")
        logger.warning(
            "statement timeout on %s %s: %s", request.method, request.url.path, database_cause(request, exc)
        )
        return problem_response(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "the request took too long in the database; retry shortly",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
            problem_type=ProblemType.STATEMENT_TIMEOUT,
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
    # During a failover (docs/scaling.md): 25006, a write on a node that turned read-only,
    # and no host of a multi-host URL writable yet (target_session_attrs=read-write).
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    unavailable = (
        sqlstate.startswith("08")
        or sqlstate in ("57P01", "57P02", "57P03", "53300", "25006")
        or isinstance(exc.orig.__cause__ if exc.orig else None, TargetServerAttributeNotMatched)
    )
    if not (
        unavailable
        or exc.connection_invalidated
        or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    ):
        return await _unexpected_error(request, exc)
    _note_unavailable(request, "database_unavailable")
    logger.error(
        "database unavailable on %s %s: %s", request.method, request.url.path, database_cause(request, exc)
    )
    return _service_unavailable("the database is unavailable; retry shortly")


async def _connection_error(request: Request, exc: Exception) -> JSONResponse:
    # Some drivers (asyncpg when connecting) raise the socket's error unwrapped.
    if not isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return await _unexpected_error(request, exc)
    _note_unavailable(request, "database_unavailable")
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


_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    HTTPStatus.UNAUTHORIZED: {
        "WWW-Authenticate": {"description": "The scheme to authenticate with.", "schema": {"type": "string"}}
    },
    HTTPStatus.TOO_MANY_REQUESTS: {
        "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
    },
    HTTPStatus.SERVICE_UNAVAILABLE: {
        "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
    },
}


def _example(problem_type: ProblemType) -> dict[str, Any]:
    kind = PROBLEM_KINDS[problem_type]
    value: dict[str, Any] = {
        "type": problem_type.value,
        "title": kind.status.phrase,
        "status": kind.status.value,
        "detail": kind.example,
    }
    if problem_type is ProblemType.VALIDATION_ERROR:
        value["errors"] = [
            {"loc": ["body", "email"], "msg": "not a valid email address", "type": "string_pattern_mismatch"}
        ]
    return {"summary": problem_type.slug, "value": value}


def error_responses(*errors: int | ProblemType) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem responses a route can return, each with its examples.

    A status stands for its general kind (409: `conflict`), a ProblemType for itself and
    its status (EMAIL_TAKEN: 409, `email-taken`).
    """
    kinds: dict[int, list[ProblemType]] = {}
    for error in errors:
        problem_type = error if isinstance(error, ProblemType) else _KIND_OF_STATUS[error]
        kinds.setdefault(PROBLEM_KINDS[problem_type].status, []).append(problem_type)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, problem_types in kinds.items():
        response: dict[str, Any] = {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {
                PROBLEM_MEDIA_TYPE: {
                    "examples": {problem_type.slug: _example(problem_type) for problem_type in problem_types}
                }
            },
        }
        if status in _ERROR_HEADERS:
            response["headers"] = _ERROR_HEADERS[status]
        responses[status] = response
    return responses
