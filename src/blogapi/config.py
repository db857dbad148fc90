"""Settings, read from the environment or a `.env` file.

Relative paths are resolved here and nowhere else: a relative SQLite path in
`DATABASE_URL` and a relative `SECRET_KEY_FILE` are taken inside `DATA_DIR`, never in the
current folder, so every command of an install finds the same database and key.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import parse_qs, unquote, urlsplit

import platformdirs
from fastapi import Depends, Request
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy import make_url

logger = logging.getLogger(__name__)

MIN_SECRET_KEY_LENGTH = 32


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"
    TEST = "test"


class DatabasePooler(StrEnum):
    """What sits between blogapi and PostgreSQL."""

    NONE = "none"
    PGBOUNCER = "pgbouncer"
    """PgBouncer in transaction pooling mode (docs/scaling.md)."""


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["json", "text"]
TracesExporter = Literal["otlp", "console", "none"]
MIN_METRICS_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    # A rejected value is never echoed in the error: it may be (part of) the secret key.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    # Where the default SQLite database and the development key live.
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("blogapi", appauthor=False))
    )
    database_url: str = "sqlite+aiosqlite:///blogapi.db"  # relative: inside data_dir
    # Unset (empty) in development: the install's own random key, kept in secret_key_file
    # and made on first use. Production and test must be given one.
    secret_key: SecretStr = SecretStr("")
    secret_key_file: Path = Path("secret_key")  # relative: inside data_dir
    environment: Environment = Environment.DEVELOPMENT
    # Short: an access token is checked against its session on every request, but a
    # refresh token (rotated at each use) is what keeps a client logged in.
    access_token_minutes: int = Field(default=15, ge=1, le=60 * 24 * 30)
    # A login's session ends this long after the login, however often it is refreshed.
    session_days: int = Field(default=30, ge=1, le=366)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    cors_origins: Annotated[list[str], NoDecode] = []
    # A fixed pool: an overflow connection is closed when it comes back to a full pool, so
    # under steady load above pool_size every few requests would open a new connection.
    pool_size: int = Field(default=15, ge=1)
    max_overflow: int = Field(default=0, ge=0)
    pool_timeout: float = Field(default=5.0, gt=0)
    pool_recycle: int = Field(default=1800, ge=-1)
    # The longest a statement of the app may run (0: no limit); a list reads a page in
    # milliseconds, so one past this is scanning: cut off with a 503, not left to run on
    # after its client has gone. Migrations are not limited.
    statement_timeout_ms: int = Field(default=5000, ge=0)
    # `?q=` (search.py): a term found by the text index lists all its matches when they are
    # at most this many; a more common (or a 1-2 character) term walks at most this many
    # posts or users per page, newest first, and says so (`search_capped`).
    search_max_matches: int = Field(default=1000, ge=1)

    # PgBouncer in transaction mode hands each transaction a server connection of its own
    # choosing: no prepared-statement caches, no session state, no autocommit reads.
    database_pooler: DatabasePooler = DatabasePooler.NONE
    # PostgreSQL streaming replicas that GET requests read from (comma-separated URLs;
    # docs/scaling.md). One lagging more than read_max_lag_seconds, or down, is skipped.
    read_database_url: Annotated[list[str], NoDecode] = []
    read_max_lag_seconds: float = Field(default=5.0, gt=0)
    # How long a read that presents X-Commit-LSN waits for a replica to replay it before
    # it reads from the primary instead.
    read_your_writes_wait_ms: int = Field(default=100, ge=0, le=10_000)
    # Argon2 is CPU-bound: hashing on every core at once would starve the event loop.
    hash_concurrency: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 2) // 2), ge=1)
    idempotency_key_hours: int = Field(default=24, ge=1)
    login_failures_per_account: int = Field(default=10, ge=1)
    login_failures_per_address: int = Field(default=100, ge=1)
    login_failure_window_seconds: int = Field(default=900, ge=1)
    # Past its limit an account is slowed down, not locked: one attempt per this many seconds.
    login_slowdown_seconds: int = Field(default=30, ge=1)
    login_failures_per_account_and_address: int = Field(default=10, ge=1)
    signups_per_address: int = Field(default=20, ge=1)
    signup_window_seconds: int = Field(default=3600, ge=1)
    recent_login_minutes: int = Field(default=10, ge=0)
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto `blogapi serve` believes (addresses or
    # CIDRs, comma-separated). None by default: a client could otherwise choose the address
    # that login throttling counts its failures against.
    trusted_proxies: Annotated[list[str], NoDecode] = []
    # Logs and metrics (README, "Operating blogapi"). LOG_FORMAT: `json`, or `text`
    # (readable key=value lines); unset, `json` when ENVIRONMENT=production.
    log_level: LogLevel = "INFO"
    log_format: LogFormat | None = None
    # Metrics are off unless one of these is set: GET /metrics on the main port for
    # `Authorization: Bearer <METRICS_TOKEN>`, and/or on METRICS_HOST:METRICS_PORT
    # (served by `blogapi serve`, without a token: bind it where only scrapers reach).
    metrics_token: SecretStr | None = None
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    # Mail (README, "Mail"). SMTP_URL: smtp://[user:password@]host[:port] (STARTTLS when the
    # server offers it; `?starttls=require` insists) or smtps:// (implicit TLS). A secret:
    # its password is never logged (`SmtpServer.redacted`). Unset: mails are written to the
    # log in development and test (the log is the outbox), and only "mail not sent" is
    # logged in production; MAIL_OUTBOX also writes each as an .eml file there.
    smtp_url: SecretStr | None = None
    mail_from: str = "blogapi <noreply@localhost>"
    mail_outbox: Path | None = None
    mail_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    # Unverified accounts cannot publish, and an email change waits for the new address.
    require_verified_email: bool = False
    password_reset_minutes: int = Field(default=30, ge=1, le=24 * 60)
    verification_hours: int = Field(default=48, ge=1, le=24 * 30)
    # Reset mails per requested address (over: none sent, silently) and reset requests per
    # client address (over: 429), per window.
    password_resets_per_account: int = Field(default=3, ge=1)
    password_resets_per_address: int = Field(default=20, ge=1)
    password_reset_window_seconds: int = Field(default=3600, ge=1)
    # The admin console at /admin (README, "Admin console"): a 404 unless enabled.
    admin_enabled: bool = False
    # Stopping (README, "Operating blogapi"): on SIGTERM /health/ready answers 503 at once,
    # the listener stays open SHUTDOWN_DRAIN more seconds (for a load balancer to see it),
    # then closes, and requests in flight have SHUTDOWN_TIMEOUT seconds to finish.
    shutdown_timeout: int = Field(default=20, ge=1)
    shutdown_drain: float = Field(default=0.0, ge=0)
    # The source revision this build was made from (GET /version); else read from the
    # package's REVISION file, written at build time, if there is one.
    revision: str | None = Field(default=None, validation_alias="BLOGAPI_REVISION", max_length=64)
    # Traces (OpenTelemetry, tracing.py), by the standard variables: on with
    # OTEL_TRACES_EXPORTER=otlp (or console), or with an OTLP endpoint given and
    # OTEL_TRACES_EXPORTER unset; off with OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none.
    # The exporter reads the other OTEL_EXPORTER_OTLP_* variables (headers, protocol) itself.
    otel_traces_exporter: TracesExporter | None = None
    otel_exporter_otlp_endpoint: str | None = None
    otel_exporter_otlp_traces_endpoint: str | None = None
    otel_sdk_disabled: bool = False

    @field_validator("database_url")
    @classmethod
    def use_async_driver(cls, url: str) -> str:
        """Give plain PostgreSQL and MySQL URLs (as hosting platforms hand them out) an async driver."""
        scheme, sep, rest = url.partition("://")
        drivers = {
            "postgres": "postgresql+asyncpg",
            "postgresql": "postgresql+asyncpg",
            "mysql": "mysql+aiomysql",
            "mariadb": "mysql+aiomysql",
            "sqlite": "sqlite+aiosqlite",
        }
        return f"{drivers.get(scheme, scheme)}{sep}{rest}"

    @field_validator("read_database_url")
    @classmethod
    def replicas_use_async_driver(cls, urls: list[str]) -> list[str]:
        return [cls.use_async_driver(url) for url in urls]

    @field_validator("cors_origins", "trusted_proxies", "read_database_url", mode="before")
    @classmethod
    def split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def upper_case(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def lower_case(cls, value: object) -> object:
        return (value.strip().lower() or None) if isinstance(value, str) else value

    @field_validator("otel_traces_exporter", mode="before")
    @classmethod
    def exporter_name(cls, value: object) -> object:
        return (value.strip().lower() or None) if isinstance(value, str) else value

    @property
    def tracing_exporter(self) -> TracesExporter | None:
        """The exporter traces go to; None when tracing is off."""
        if self.otel_sdk_disabled or self.otel_traces_exporter == "none":
            return None
        if self.otel_traces_exporter is not None:
            return self.otel_traces_exporter
        if self.otel_exporter_otlp_endpoint or self.otel_exporter_otlp_traces_endpoint:
            return "otlp"
        return None

    @field_validator("metrics_token")
    @classmethod
    def long_metrics_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None or not token.get_secret_value():
            return None
        if len(token.get_secret_value()) < MIN_METRICS_TOKEN_LENGTH:
            raise ValueError(f"must be at least {MIN_METRICS_TOKEN_LENGTH} characters")
        return token

    @field_validator("smtp_url")
    @classmethod
    def parse_smtp_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is None or not url.get_secret_value().strip():
            return None
        smtp_server(url)  # raises ValueError, without the URL (it holds a password)
        return url

    @property
    def logs_as_json(self) -> bool:
        if self.log_format is None:
            return self.environment is Environment.PRODUCTION
        return self.log_format == "json"

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_token is not None or self.metrics_port is not None

    @field_validator("trusted_proxies")
    @classmethod
    def parse_networks(cls, proxies: list[str]) -> list[str]:
        for proxy in proxies:
            try:
                ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError("each entry must be an IP address or a CIDR network") from None
        return proxies

    @model_validator(mode="after")
    def resolve_paths_and_secret_key(self) -> Self:
        self.data_dir = self.data_dir.expanduser()
        if not self.data_dir.is_absolute():
            raise ValueError(f"DATA_DIR must be an absolute path, not {str(self.data_dir)!r}")
        self.database_url = resolve_sqlite_path(self.database_url, self.data_dir)
        if self.database_pooler is DatabasePooler.PGBOUNCER and not self.database_url.startswith(
            "postgresql"
        ):
            raise ValueError(
                "DATABASE_POOLER=pgbouncer needs a PostgreSQL DATABASE_URL (PgBouncer's address)"
            )
        if self.read_database_url and not all(
            url.startswith("postgresql") for url in [self.database_url, *self.read_database_url]
        ):
            raise ValueError("READ_DATABASE_URL needs PostgreSQL, for the primary and each replica")
        self.secret_key_file = self.data_dir / self.secret_key_file.expanduser()
        secret = self.secret_key.get_secret_value()
        if self.environment is Environment.PRODUCTION and len(secret) < MIN_SECRET_KEY_LENGTH:
            raise ValueError(
                f"SECRET_KEY must be set to a random value of at least {MIN_SECRET_KEY_LENGTH}"
                " characters when ENVIRONMENT=production; make one with"
                " `python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        if self.environment is Environment.TEST and not secret:
            raise ValueError("SECRET_KEY must be set when ENVIRONMENT=test")
        if not secret:
            self.secret_key = SecretStr(load_or_create_secret_key(self.secret_key_file))
        return self


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where mail goes, from SMTP_URL."""

    hostname: str
    port: int
    implicit_tls: bool
    """smtps://: TLS from the first byte (port 465 by default)."""
    require_starttls: bool
    """smtp://...?starttls=require: refuse a server without STARTTLS (else it is used when offered)."""
    username: str | None
    password: str | None

    @property
    def redacted(self) -> str:
        """The URL for the log: never the password."""
        scheme = "smtps" if self.implicit_tls else "smtp"
        user = f"{self.username}:***@" if self.username else ""
        return f"{scheme}://{user}{self.hostname}:{self.port}"


def smtp_server(url: SecretStr) -> SmtpServer:
    """SMTP_URL parsed; ValueError (which never repeats the URL) if it is not one."""
    parts = urlsplit(url.get_secret_value().strip())
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError("SMTP_URL must start with smtp:// or smtps://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("SMTP_URL has an invalid port") from None
    if not parts.hostname:
        raise ValueError("SMTP_URL has no host")
    starttls = parse_qs(parts.query).get("starttls", ["auto"])[-1]
    if starttls not in ("auto", "require"):
        raise ValueError("SMTP_URL's starttls must be `auto` or `require`")
    implicit_tls = parts.scheme == "smtps"
    return SmtpServer(
        hostname=parts.hostname,
        port=port or (465 if implicit_tls else 587),
        implicit_tls=implicit_tls,
        require_starttls=starttls == "require",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def resolve_sqlite_path(database_url: str, data_dir: Path) -> str:
    """A SQLite URL whose file path is relative, made absolute inside `data_dir`.

    In-memory databases (`sqlite://`, `:memory:`) and `file:` URIs are left as they are.
    """
    if not database_url.startswith("sqlite"):
        return database_url
    url = make_url(database_url)
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return database_url
    if Path(database).is_absolute():
        return database_url
    return url.set(database=str(data_dir / database)).render_as_string(hide_password=False)


def load_or_create_secret_key(path: Path) -> str:
    """The key in `path`; if there is none yet, a new random one, stored there owner-only.

    Every process of an install calls this (the workers of `blogapi serve --workers N`
    each build their settings), so creating the file is race-free: the key is written to
    a private temporary file that is then hard-linked into place, which fails if another
    process got there first; that one's key is then read and used.
    """
    try:
        return _read_secret_key(path)
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(48)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkstemp creates the file readable and writable by its owner only (0600).
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(f"{key}\n")
                file.flush()
                os.fsync(file.fileno())
            os.link(temporary, path)
        finally:
            os.unlink(temporary)
    except FileExistsError:
        return _read_secret_key(path)
    except OSError as exc:
        raise ValueError(f"cannot create the secret key file {path}: {exc.strerror}") from None
    logger.warning(
        "SECRET_KEY is not set: created a random key in %s, which signs this install's tokens"
        " from now on (keep it private; set SECRET_KEY and ENVIRONMENT=production to deploy)",
        path,
    )
    return key


def _read_secret_key(path: Path) -> str:
    try:
        with path.open(encoding="utf-8") as file:
            mode = os.fstat(file.fileno()).st_mode
            key = file.read().strip()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"cannot read the secret key file {path}: {exc.strerror}") from None
    if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
        raise ValueError(
            f"the secret key file {path} is readable by other users: `chmod 600 {path}`,"
            " and replace the key if anyone may have read it"
        )
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise ValueError(
            f"the secret key file {path} holds fewer than {MIN_SECRET_KEY_LENGTH} characters:"
            " delete it and a new key is made"
        )
    return key


@lru_cache
def get_settings() -> Settings:
    return Settings()


async def settings_of_app(request: Request) -> Settings:
    """The settings the running app was built with (tests build apps with their own)."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(settings_of_app)]
