"""Logging in: throttled, constant-cost, and without holding a connection while hashing."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from blogapi.auth import throttle
from blogapi.auth.security import verify_password
from blogapi.config import Settings
from blogapi.db import Database, utcnow
from blogapi.errors import InvalidCredentials, InvalidInput, TooManyRequests
from blogapi.users.models import User
from blogapi.validation import is_utf8


def _storable(text: str) -> bool:
    """Text a database can compare against and a hasher can encode (no NUL, no lone surrogates)."""
    return is_utf8(text) and "\x00" not in text


async def log_in(database: Database, email: str, password: str, address: str, settings: Settings) -> User:
    """The account for these credentials; InvalidCredentials or TooManyRequests otherwise.

    Runs its own short transactions rather than the request's: a failure must be counted
    even though the request fails, and no connection is held during the Argon2 check.
    """
    email = email.strip().lower()
    if not _storable(email) or not _storable(password):
        raise InvalidInput("the username and password must be text without control characters")
    limits = {
        throttle.account_bucket(email): settings.login_failures_per_account,
        throttle.address_bucket(address): settings.login_failures_per_address,
    }
    window = timedelta(seconds=settings.login_failure_window_seconds)
    async with database.read_sessionmaker.begin() as session:
        blocked = await throttle.seconds_blocked(session, limits, utcnow(), window)
        if blocked:
            raise TooManyRequests("too many failed logins; try again later", retry_after=blocked)
        user = await session.scalar(select(User).where(User.email == email))
    # An unknown email costs one verification too: timing does not reveal who has an account.
    valid = await verify_password(
        password, user.password_hash if user else None, concurrency=settings.hash_concurrency
    )
    async with database.sessionmaker.begin() as session:
        if user is not None and valid:
            await throttle.forget(session, throttle.account_bucket(email))
            return user
        await throttle.record_failure(session, list(limits), utcnow(), window)
    raise InvalidCredentials("the email or password is incorrect")
