"""Login throttling: failed logins counted per account and per client address.

Counts live in the database (one row per bucket, a fixed window each) so that every
worker process and every instance behind the load balancer enforces the same limits.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, case, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from blogapi.auth.models import BUCKET_MAX, LoginFailures
from blogapi.db import insert_missing


def account_bucket(email: str) -> str:
    return f"account:{email}"[:BUCKET_MAX]


def address_bucket(address: str) -> str:
    return f"address:{address}"[:BUCKET_MAX]


async def seconds_blocked(
    session: AsyncSession, limits: dict[str, int], now: datetime, window: timedelta
) -> int:
    """How long the most constrained bucket still refuses logins; 0 when none does."""
    rows = await session.execute(
        select(LoginFailures.bucket, LoginFailures.failures, LoginFailures.window_start).where(
            LoginFailures.bucket.in_(limits), LoginFailures.window_start > now - window
        )
    )
    waits = [
        (window_start + window - now).total_seconds()
        for bucket, failures, window_start in rows
        if failures >= limits[bucket]
    ]
    return int(max(waits, default=0)) + (1 if waits else 0)


async def record_failure(session: AsyncSession, buckets: list[str], now: datetime, window: timedelta) -> None:
    """Count one failure in each bucket, starting a new window where the old one ended."""
    await insert_missing(
        await session.connection(),
        LoginFailures,
        [{"bucket": bucket, "failures": 0, "window_start": now} for bucket in buckets],
    )
    expired = LoginFailures.window_start <= now - window
    await session.execute(
        update(LoginFailures)
        .where(LoginFailures.bucket.in_(buckets))
        .values(
            # Atomic in the database: concurrent failures are all counted.
            failures=case((expired, 1), else_=LoginFailures.failures + 1),
            window_start=case((expired, now), else_=LoginFailures.window_start),
        )
    )


async def forget(session: AsyncSession, bucket: str) -> None:
    await session.execute(delete(LoginFailures).where(LoginFailures.bucket == bucket))


async def unlock_account(session: AsyncSession, email: str) -> bool:
    """Forget an account's failed logins (`blogapi user unlock`); False when it had none."""
    result = await session.execute(
        delete(LoginFailures).where(LoginFailures.bucket == account_bucket(email.strip().lower()))
    )
    return bool(cast("CursorResult[Any]", result).rowcount)
