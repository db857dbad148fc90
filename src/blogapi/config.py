"""Settings, read from the environment or a `.env` file."""

from __future__ import annotations

import os
from enum import StrEnum
from functools import lru_cache
from ipaddress import ip_network
from typing import Annotated, Self

from fastapi import Depends, Request
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_SECRET_KEY = "dev-secret-key-change-me-dev-secret-key"  # noqa: S105  (refused in production)
MIN_SECRET_KEY_LENGTH = 32


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"
    TEST = "test"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./blogapi.db"
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    environment: Environment = Environment.DEVELOPMENT
    access_token_minutes: int = Field(default=60, ge=1, le=60 * 24 * 30)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    cors_origins: Annotated[list[str], NoDecode] = []
    # A fixed pool: an overflow connection is closed when it comes back to a full pool, so
    # under steady load above pool_size every few requests would open a new connection.
    pool_size: int = Field(default=15, ge=1)
    max_overflow: int = Field(default=0, ge=0)
    pool_timeout: float = Field(default=5.0, gt=0)
    pool_recycle: int = Field(default=1800, ge=-1)
    # Argon2 is CPU-bound: hashing on every core at once would starve the event loop.
    hash_concurrency: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 2) // 2), ge=1)
    idempotency_key_hours: int = Field(default=24, ge=1)
    login_failures_per_account: int = Field(default=10, ge=1)
    login_failures_per_address: int = Field(default=100, ge=1)
    login_failure_window_seconds: int = Field(default=900, ge=1)
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto `blogapi serve` believes (addresses or
    # CIDRs, comma-separated). None by default: a client could otherwise choose the address
    # that login throttling counts its failures against.
    trusted_proxies: Annotated[list[str], NoDecode] = []

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

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

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
    def refuse_weak_secret_in_production(self) -> Self:
        if self.environment is Environment.PRODUCTION:
            secret = self.secret_key.get_secret_value()
            if secret == DEFAULT_SECRET_KEY or len(secret) < MIN_SECRET_KEY_LENGTH:
                raise ValueError(
                    f"SECRET_KEY must be set to a random value of at least {MIN_SECRET_KEY_LENGTH}"
                    " characters when ENVIRONMENT=production"
                )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()


async def settings_of_app(request: Request) -> Settings:
    """The settings the running app was built with (tests build apps with their own)."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(settings_of_app)]
