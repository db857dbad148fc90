"""Throttling of logins and sign-ups, kept in the database.

Counts live in one table (one row per bucket, a fixed window each) so that every worker
process and every instance behind the load balancer enforces the same limits.

An attempt is *reserved* before its password hash runs, in a short transaction of its own:
one conditional `UPDATE ... SET attempts = attempts + 1 WHERE ... attempts < limit` per
bucket, which the database applies atomically (a row lock on PostgreSQL and MariaDB, the
write lock of `BEGIN IMMEDIATE` on SQLite). A bucket that is full refuses the attempt and
the transaction rolls back, taking the other buckets' reservations with it; so N
concurrent attempts let at most the limit through to the hash, in any number of processes.
A failed attempt keeps its reservation (it is the count of failures); a successful one
releases it.

Buckets are taken in a fixed order (address, account and address, account, slow-down),
so two reservations never wait on each other's rows in opposite orders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from math import ceil
from typing import Any

from sqlalchemy import bindparam, case, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from blogapi.auth.models import BUCKET_MAX, LoginFailures
from blogapi.config import Settings
from blogapi.db import insert_missing, utcnow
from blogapi.errors import TooManyRequests
from blogapi.users.schemas import normalize_email

PRUNE_BATCH = 8
"""Expired rows deleted per reservation: more than the (at most four) rows one can create,
so the expired rows shrink however many distinct buckets are used."""


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    limit: int
    window: timedelta


def _key(kind: str, name: str) -> str:
    return f"{kind}:{name}"[:BUCKET_MAX]


def account_bucket(email: str) -> str:
    return _key("account", email)


def address_bucket(address: str) -> str:
    return _key("address", address)


def account_address_bucket(email: str, address: str) -> str:
    # An email holds no whitespace (the schema's pattern), so the space ends it.
    return _key("account-address", f"{email} {address}")


def slowdown_bucket(email: str) -> str:
    return _key("slowdown", email)


def signup_bucket(address: str) -> str:
    return _key("signup", address)


@dataclass(frozen=True, slots=True)
class LoginBuckets:
    """What one login attempt for `email` from `address` is counted in."""

    address: Bucket
    account_address: Bucket
    account: Bucket
    slowdown: Bucket
    """Past the account's limit: one attempt per LOGIN_SLOWDOWN_SECONDS for the account, so
    that strangers slow the owner down but cannot lock them out."""

    @classmethod
    def of(cls, email: str, address: str, settings: Settings) -> LoginBuckets:
        window = timedelta(seconds=settings.login_failure_window_seconds)
        return cls(
            address=Bucket(address_bucket(address), settings.login_failures_per_address, window),
            account_address=Bucket(
                account_address_bucket(email, address),
                settings.login_failures_per_account_and_address,
                window,
            ),
            account=Bucket(account_bucket(email), settings.login_failures_per_account, window),
            slowdown=Bucket(slowdown_bucket(email), 1, timedelta(seconds=settings.login_slowdown_seconds)),
        )


_EXPIRED = LoginFailures.window_start <= bindparam("window_starts_after")
# One attempt more in a bucket with room (or whose window is over: a new window starts).
_RESERVE = (
    update(LoginFailures)
    .where(
        LoginFailures.bucket == bindparam("key"),
        or_(_EXPIRED, LoginFailures.failures < bindparam("limit")),
    )
    .values(
        failures=case((_EXPIRED, 1), else_=LoginFailures.failures + 1),
        window_start=case((_EXPIRED, bindparam("now")), else_=LoginFailures.window_start),
    )
)
_RELEASE = (
    update(LoginFailures)
    .where(LoginFailures.bucket == bindparam("key"), LoginFailures.failures > 0)
    .values(failures=LoginFailures.failures - 1)
)
_WINDOW_START = select(LoginFailures.window_start).where(LoginFailures.bucket == bindparam("key"))
_FORGET = delete(LoginFailures).where(LoginFailures.bucket.in_(bindparam("keys", expanding=True)))


async def _try_reserve(connection: AsyncConnection, bucket: Bucket, now: datetime) -> bool:
    values = {
        "key": bucket.key,
        "limit": bucket.limit,
        "now": now,
        "window_starts_after": now - bucket.window,
    }
    if (await connection.execute(_RESERVE, values)).rowcount == 1:
        return True
    if await connection.scalar(_WINDOW_START, {"key": bucket.key}) is not None:
        return False  # full
    # Pruned (long expired) since it was found: create it again.
    await _create_missing(connection, [bucket], now)
    return (await connection.execute(_RESERVE, values)).rowcount == 1


async def _refuse(connection: AsyncConnection, bucket: Bucket, now: datetime, detail: str) -> TooManyRequests:
    window_start = await connection.scalar(_WINDOW_START, {"key": bucket.key})
    wait = (window_start + bucket.window - now).total_seconds() if window_start else 1
    return TooManyRequests(detail, retry_after=ceil(wait))


async def _create_missing(connection: AsyncConnection, buckets: Sequence[Bucket], now: datetime) -> None:
    # A new row starts empty; the UPDATE below then counts the attempt like any other.
    await insert_missing(
        connection,
        LoginFailures,
        [{"bucket": bucket.key, "failures": 0, "window_start": now} for bucket in buckets],
    )


TOO_MANY_LOGINS = "too many failed logins; try again later"


async def reserve_login(
    connection: AsyncConnection, buckets: LoginBuckets, settings: Settings, now: datetime
) -> None:
    """Count one login attempt, or raise TooManyRequests; then prune expired rows.

    Run in a transaction of its own, committed before the password is checked; a refusal
    must roll it back (raise out of it).
    """
    await _create_missing(connection, [buckets.address, buckets.account_address, buckets.account], now)
    for bucket in (buckets.address, buckets.account_address):
        if not await _try_reserve(connection, bucket, now):
            raise await _refuse(connection, bucket, now, TOO_MANY_LOGINS)
    if not await _try_reserve(connection, buckets.account, now):
        await _create_missing(connection, [buckets.slowdown], now)
        if not await _try_reserve(connection, buckets.slowdown, now):
            raise await _refuse(connection, buckets.slowdown, now, TOO_MANY_LOGINS)
    await prune(connection, settings, now)


async def login_succeeded(connection: AsyncConnection, buckets: LoginBuckets) -> None:
    """A success is no failure: release its reservation, and forget the account's failures.

    The address's other failures stay counted (they may be guesses at other accounts).
    """
    await connection.execute(_RELEASE, [{"key": buckets.address.key}])
    account_keys = [buckets.account_address.key, buckets.account.key, buckets.slowdown.key]
    await connection.execute(_FORGET, {"keys": account_keys})


async def reserve_signup(connection: AsyncConnection, address: str, settings: Settings) -> None:
    """Count one sign-up from `address` (before its hash is computed), or raise TooManyRequests.

    Then prune expired rows. Run in a transaction of its own.
    """
    now = utcnow()
    bucket = Bucket(
        signup_bucket(address),
        settings.signups_per_address,
        timedelta(seconds=settings.signup_window_seconds),
    )
    await _create_missing(connection, [bucket], now)
    if not await _try_reserve(connection, bucket, now):
        raise await _refuse(connection, bucket, now, "too many sign-ups from this address; try again later")
    await prune(connection, settings, now)


def reset_address_bucket(address: str) -> str:
    return _key("reset-address", address)


def reset_account_bucket(email: str) -> str:
    return _key("reset-account", email)


def verify_bucket(user_id: int) -> str:
    return _key("verify", str(user_id))


TOO_MANY_RESETS = "too many password reset requests from this address; try again later"


async def reserve_reset(connection: AsyncConnection, email: str, address: str, settings: Settings) -> bool:
    """Count a password reset request for `email` from `address`.

    TooManyRequests past the address's limit (said openly: it tells nothing about any
    account). Past the limit for `email` (counted whether or not an account has it, so
    the count reveals nothing either), False: the request is answered as any other, but no
    mail is sent, so nobody can flood an inbox. Run in a transaction of its own.
    """
    now = utcnow()
    window = timedelta(seconds=settings.password_reset_window_seconds)
    by_address = Bucket(reset_address_bucket(address), settings.password_resets_per_address, window)
    by_account = Bucket(reset_account_bucket(email), settings.password_resets_per_account, window)
    await _create_missing(connection, [by_address, by_account], now)
    if not await _try_reserve(connection, by_address, now):
        raise await _refuse(connection, by_address, now, TOO_MANY_RESETS)
    allowed = await _try_reserve(connection, by_account, now)
    await prune(connection, settings, now)
    return allowed


async def reserve_verification(connection: AsyncConnection, user_id: int, settings: Settings) -> None:
    """Count a request for a new verification mail by its (logged-in) owner, or raise TooManyRequests."""
    now = utcnow()
    bucket = Bucket(
        verify_bucket(user_id),
        settings.password_resets_per_account,
        timedelta(seconds=settings.password_reset_window_seconds),
    )
    await _create_missing(connection, [bucket], now)
    if not await _try_reserve(connection, bucket, now):
        raise await _refuse(connection, bucket, now, "too many verification mails asked for; try again later")


def longest_window(settings: Settings) -> timedelta:
    return timedelta(
        seconds=max(
            settings.login_failure_window_seconds,
            settings.login_slowdown_seconds,
            settings.signup_window_seconds,
            settings.password_reset_window_seconds,
        )
    )


# SKIP LOCKED: a row another transaction holds is left for a later prune, so pruning never
# waits on (nor deadlocks with) a reservation. SQLite ignores FOR UPDATE: its writers take
# turns anyway.
_EXPIRED_ROWS = (
    select(LoginFailures.bucket)
    .where(LoginFailures.window_start < bindparam("cutoff"))
    .limit(PRUNE_BATCH)
    .with_for_update(skip_locked=True)
)
_DELETE_EXPIRED = delete(LoginFailures).where(
    LoginFailures.bucket.in_(bindparam("keys", expanding=True)),
    LoginFailures.window_start < bindparam("cutoff"),
)


async def prune(connection: AsyncConnection, settings: Settings, now: datetime) -> int:
    """Delete up to PRUNE_BATCH rows whose every window is over; how many were deleted.

    Last in a reservation's transaction: it never waits for a lock (SKIP LOCKED), so it
    cannot close a cycle of waits; run first, its deletions could.
    """
    cutoff = now - longest_window(settings)
    keys = list((await connection.scalars(_EXPIRED_ROWS, {"cutoff": cutoff})).all())
    if not keys:
        return 0
    result = await connection.execute(_DELETE_EXPIRED, {"keys": keys, "cutoff": cutoff})
    return result.rowcount


async def unlock(connection_or_session: AsyncConnection | AsyncSession, email: str) -> int:
    """Forget every failed login counted against the account `email` (from any address).

    How many rows were deleted. The address buckets stay: they may hold guesses at other
    accounts. `email` is normalised as logins normalise it.
    """
    email = normalize_email(email.strip())
    statement = delete(LoginFailures).where(
        or_(
            LoginFailures.bucket.in_([account_bucket(email), slowdown_bucket(email)]),
            LoginFailures.bucket.startswith(account_address_bucket(email, ""), autoescape=True),
        )
    )
    result: Any = await connection_or_session.execute(statement)
    count: int = result.rowcount
    return count
