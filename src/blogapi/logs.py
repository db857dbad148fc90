"""One log stream: blogapi's lines and uvicorn's, SQLAlchemy's and Alembic's, through structlog.

Every line goes through the root logger's one handler, rendered by structlog: JSON objects
(`LOG_FORMAT=json`) or readable `key=value` lines. A line logged while a request runs
carries its `request_id` (a context variable, set by `observe.RequestObserver`).

What never reaches the stream: request bodies and headers are never logged; SQLAlchemy
logs statements and their parameters at INFO, so the libraries' own loggers are held at
WARNING whatever LOG_LEVEL says; and, as a last guard, every rendered line has the secret
key, the database password, the metrics token, the password of any URL and any bearer
token or JWT masked.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

import structlog
from sqlalchemy import make_url
from structlog.typing import EventDict, Processor, WrappedLogger

from blogapi.config import Settings

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""An `X-Request-ID` a client or proxy sends is kept when it is 1-64 of these characters
(a UUID, a hex id, `trace.span`), else replaced: it is echoed and logged, so it must be
short and carry no spaces, quotes or control characters."""

request_id_var: ContextVar[str | None] = ContextVar("blogapi_request_id", default=None)

# Libraries whose INFO and DEBUG lines carry data (SQLAlchemy: statements and their
# parameters; aiosqlite: every call and its arguments; python-multipart: form parts) or
# are per-request noise (Alembic, on every /health/ready): shown from WARNING up.
QUIET_LIBRARIES = (
    "sqlalchemy",
    "alembic",
    "aiosqlite",
    "asyncpg",
    "aiomysql",
    "multipart",
    "python_multipart",
    "asyncio",
    "httpx",
    "httpcore",
)
MASK = "***"
_URL_PASSWORD = re.compile(r"(?<=://)([^:/@\s]*):[^@\s]+@")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',]+")
_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")


def current_request_id() -> str | None:
    """The id of the request being handled, if any."""
    return request_id_var.get()


def add_request_id(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    request_id = request_id_var.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


class Redact:
    """The last processor: masks secrets anywhere in a rendered line, whoever logged it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so that a secret containing another is masked whole.
        self.secrets = sorted({secret for secret in secrets if len(secret) >= 4}, key=len, reverse=True)

    def __call__(self, _logger: WrappedLogger, _method: str, line: Any) -> str:  # a rendered line
        text = line.decode() if isinstance(line, bytes) else line
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        if "://" in text:
            text = _URL_PASSWORD.sub(rf"\1:{MASK}@", text)
        if "earer" in text or "EARER" in text:
            text = _BEARER.sub(rf"\1{MASK}", text)
        if "eyJ" in text:
            text = _JWT.sub(MASK, text)
        return text


def secrets_of(settings: Settings) -> list[str]:
    secrets = [settings.secret_key.get_secret_value()]
    # An unparsable URL has no password to find (the CLI says what is wrong with it).
    with contextlib.suppress(Exception):
        secrets.append(make_url(settings.database_url).password or "")
    if settings.metrics_token is not None:
        secrets.append(settings.metrics_token.get_secret_value())
    return secrets


def _shared_processors() -> list[Processor]:
    return [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        add_request_id,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def formatter(settings: Settings) -> structlog.stdlib.ProcessorFormatter:
    """The one formatter of the stream, for structlog's lines and the standard library's."""
    renderer: list[Processor]
    if settings.logs_as_json:
        renderer = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        # Plain tracebacks: structlog's default with Rich installed shows every frame's
        # local variables, passwords included.
        renderer = [
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback, sort_keys=False
            )
        ]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *renderer,
            Redact(secrets_of(settings)),
        ],
    )


def configure_logging(settings: Settings, stream: Any = None) -> None:
    """Route every logger of the process to one handler on `stream` (stderr), at LOG_LEVEL."""
    level = logging.getLevelNamesMapping()[settings.log_level]
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(settings))
    root = logging.getLogger()
    for old in root.handlers:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True
        server_logger.setLevel(logging.NOTSET)
    # Replaced by blogapi's access log (observe.RequestObserver): uvicorn logs access
    # lines only when this logger has a handler somewhere.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    structlog.configure(
        processors=[*_shared_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger writing to the standard library's logger `name`.

    Configured here rather than by `structlog.configure`, so that it routes to the stream
    whether or not `configure_logging` ran (tests capture the standard library's records).
    """
    logger: structlog.stdlib.BoundLogger = structlog.wrap_logger(
        logging.getLogger(name),
        processors=[*_shared_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    return logger
