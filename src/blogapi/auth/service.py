"""Logging in: throttled, constant-cost, and without holding a connection while hashing."""

from __future__ import annotations

from sqlalchemy import select

from blogapi.auth import throttle
from blogapi.auth.security import verify_password
from blogapi.config import Settings
from blogapi.db import Database, utcnow
from blogapi.errors import AccountDisabled, InvalidCredentials, InvalidInput, ReauthenticationRequired
from blogapi.users.models import User
from blogapi.users.schemas import normalize_email
from blogapi.validation import is_utf8

WRONG_CURRENT_PASSWORD = "current_password is incorrect"  # noqa: S105  (a message)


def _storable(text: str) -> bool:
    """Text a database can compare against and a hasher can encode (no NUL, no lone surrogates)."""
    return is_utf8(text) and "\x00" not in text


async def _check_password(
    database: Database, email: str, password: str, address: str, settings: Settings
) -> User | None:
    """The account if `password` is its password, else None; TooManyRequests past the limits.

    Runs its own short transactions rather than the request's: the attempt is counted
    (reserved) and committed before the Argon2 check, so that the limits hold whatever
    runs concurrently, and no connection is held during the check. A failure keeps its
    reservation; a success releases it.
    """
    buckets = throttle.LoginBuckets.of(email, address, settings)
    async with database.sessionmaker.begin() as session:
        await throttle.reserve_login(await session.connection(), buckets, settings, utcnow())
        user = await session.scalar(select(User).where(User.email == email))
    # An unknown email costs one verification too: timing does not reveal who has an account.
    valid = await verify_password(
        password, user.password_hash if user else None, concurrency=settings.hash_concurrency
    )
    if user is None or not valid:
        return None  # the reservation stays: it counts this failure
    async with database.engine.begin() as connection:
        await throttle.login_succeeded(connection, buckets)
    return user


async def log_in(database: Database, email: str, password: str, address: str, settings: Settings) -> User:
    """The account for these credentials; InvalidCredentials or TooManyRequests otherwise."""
    if not _storable(email) or not _storable(password):
        raise InvalidInput("the username and password must be text without control characters")
    user = await _check_password(database, normalize_email(email.strip()), password, address, settings)
    if user is None:
        raise InvalidCredentials("the email or password is incorrect")
    # Said only to whoever knows the password: no one else learns that the account exists.
    if not user.is_active:
        raise AccountDisabled("this account is disabled")
    return user


async def confirm_password(
    database: Database, email: str, password: str, address: str, settings: Settings
) -> None:
    """Proof that the caller knows the account's password, before a sensitive change.

    A wrong password counts as a failed login for the account (a stolen token must not
    become a way to guess the password unthrottled): Forbidden, or TooManyRequests.
    """
    if not _storable(password) or await _check_password(database, email, password, address, settings) is None:
        raise ReauthenticationRequired(WRONG_CURRENT_PASSWORD)
