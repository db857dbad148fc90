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
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

import orjson
import structlog
from sqlalchemy import make_url
from structlog.typing import EventDict, Processor, WrappedLogger

from blogapi.config import Settings, smtp_server

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
    "blogapi.db.FairQueuePool",  # SQLAlchemy's pool logging, named after the pool's class
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
    if settings.smtp_url is not None:
        secrets.append(smtp_server(settings.smtp_url).password or "")
    return secrets


_formatted_second: tuple[int, str] = (0, "")  # replaced whole: threads log too


def add_timestamp(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """ISO 8601 in UTC with microseconds: `2026-12-01T01:41:33.395637Z`.

    The date and time are formatted once a second (datetime's isoformat for each line
    cost as much as rendering the rest of an access line).
    """
    global _formatted_second
    now = time.time()
    second = int(now)
    formatted = _formatted_second
    if formatted[0] != second:
        formatted = _formatted_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    event_dict["timestamp"] = f"{formatted[1]}.{int((now - second) * 1_000_000):06d}Z"
    return event_dict


def _shared_processors() -> list[Processor]:
    return [structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, add_request_id, add_timestamp]


def _serialize(event_dict: EventDict, **_options: Any) -> str:
    # orjson: a fifth of json.dumps' cost for a line (json.dumps with structlog's options
    # builds a new encoder for each line).
    return orjson.dumps(event_dict, default=repr).decode()


def _renderer(settings: Settings) -> Processor:
    if settings.logs_as_json:
        return structlog.processors.JSONRenderer(serializer=_serialize)
    # Plain tracebacks: structlog's default with Rich installed shows every frame's
    # local variables, passwords included.
    return structlog.dev.ConsoleRenderer(
        colors=False, exception_formatter=structlog.dev.plain_traceback, sort_keys=False
    )


class Stream:
    """The stream's one handler, and its rendering for lines written without the standard
    library's machinery (the access log: a LogRecord, its copy by structlog's formatter and
    the handler's layers cost more than the rest of a small request; measured 75 µs of
    /health/live's 100)."""

    def __init__(self, handler: logging.StreamHandler[Any], renderer: Processor, redact: Redact) -> None:
        self.handler = handler
        self.processors: list[Processor] = [add_request_id, add_timestamp, renderer, redact]

    def write(self, event_dict: EventDict) -> None:
        line: Any = event_dict
        level = event_dict["level"]  # the renderers consume the dict
        for processor in self.processors:
            line = processor(None, level, line)
        handler = self.handler
        handler.acquire()
        try:
            handler.stream.write(f"{line}\n")
            handler.stream.flush()
        except Exception:  # noqa: S110  (a log line that cannot be written must not fail the request)
            pass
        finally:
            handler.release()


_stream: Stream | None = None


def configure_logging(settings: Settings, stream: Any = None) -> None:
    """Route every logger of the process to one handler on `stream` (stderr), at LOG_LEVEL."""
    global _stream
    level = logging.getLevelNamesMapping()[settings.log_level]
    handler = logging.StreamHandler(stream or sys.stderr)
    renderer = _renderer(settings)
    redact = Redact(secrets_of(settings))
    exceptions = [structlog.processors.format_exc_info] if settings.logs_as_json else []
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_shared_processors(),
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exceptions,
                renderer,
                redact,
            ],
        )
    )
    root = logging.getLogger()
    for old in root.handlers:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    _stream = Stream(handler, renderer, redact)
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


class FastLogger:
    """INFO lines of one logger, written straight to the stream when `configure_logging` set
    it up (and the handler is still the root's), else through the standard library."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.logger = logging.getLogger(name)
        self.fallback = get_logger(name)

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def info(self, event: str, **fields: Any) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        stream = _stream
        if stream is None or stream.handler not in logging.root.handlers or self.logger.handlers:
            self.fallback.info(event, **fields)
            return
        fields["event"] = event
        fields["level"] = "info"
        fields["logger"] = self.name
        stream.write(fields)
