"""Login sessions and their refresh tokens. Never commits, except `refresh`, which runs
its own transaction (a reuse must revoke the session even though the request fails)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Integer, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from blogapi.auth.security import TokenSubject
from blogapi.auth.sessions.models import ADDRESS_MAX, USER_AGENT_MAX, LoginSession, RefreshToken
from blogapi.auth.sessions.schemas import SessionRead
from blogapi.config import Settings
from blogapi.db import AnySelect, Database, utcnow
from blogapi.errors import InvalidRefreshToken, NotFound, RefreshTokenReused
from blogapi.pagination import Page, PageParams

TOUCH_INTERVAL = timedelta(minutes=1)
"""`last_used_at` is written at most this often per session: not a write per request."""
PRUNE_BATCH = 8
"""Ended sessions deleted per login: more than the one a login creates, so they shrink."""
REFRESH_TOKEN_BYTES = 32

INVALID_REFRESH_TOKEN = "the refresh token is unknown, or its session has ended: log in again"  # noqa: S105
REFRESH_TOKEN_REUSED = (
    "this refresh token was used before, so it may have been stolen: its session is ended; log in again"  # noqa: S105
)


def hash_refresh_token(token: str) -> str:
    # SHA-256 without salt or stretching: the token is 256 random bits, not a password.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _new_refresh_token() -> tuple[str, str]:
    token = secrets.token_urlsafe(REFRESH_TOKEN_BYTES)
    return token, hash_refresh_token(token)


def _printable(text: str, limit: int) -> str:
    return "".join(character for character in text if character.isprintable())[:limit]


@dataclass(frozen=True, slots=True)
class Issued:
    """What a login or a refresh hands out: the subject of the access token, and a refresh token."""

    subject: TokenSubject
    refresh_token: str
    expires_at: datetime
    """The session's end: no access token outlives it."""

    def access_lifetime(self, settings: Settings, now: datetime) -> timedelta:
        return min(timedelta(minutes=settings.access_token_minutes), self.expires_at - now)


_INSERT_TOKEN = insert(RefreshToken).values(
    token_hash=bindparam("hash"), session_id=bindparam("sid"), created_at=bindparam("now")
)


async def start(
    connection: AsyncConnection, user_id: int, address: str, user_agent: str, settings: Settings
) -> Issued:
    """A new session for `user_id` (whose password was just checked), and its first refresh token.

    Then prunes a few ended sessions (see `prune`).
    """
    now = utcnow()
    expires_at = now + timedelta(days=settings.session_days)
    result = await connection.execute(
        insert(LoginSession).values(
            user_id=user_id,
            created_at=now,
            last_used_at=now,
            expires_at=expires_at,
            address=_printable(address, ADDRESS_MAX),
            user_agent=_printable(user_agent, USER_AGENT_MAX),
        )
    )
    (session_id,) = result.inserted_primary_key or (None,)
    assert isinstance(session_id, int)
    token, token_hash = _new_refresh_token()
    await connection.execute(_INSERT_TOKEN, {"hash": token_hash, "sid": session_id, "now": now})
    await prune(connection, now)
    return Issued(TokenSubject(user_id, session_id, int(now.timestamp())), token, expires_at)


_FIND_TOKEN = (
    select(
        RefreshToken.session_id,
        RefreshToken.rotated_at,
        LoginSession.user_id,
        LoginSession.created_at,
        LoginSession.expires_at,
        LoginSession.revoked_at,
    )
    .join(LoginSession, LoginSession.id == RefreshToken.session_id)
    .where(RefreshToken.token_hash == bindparam("token_hash"))
)
# Conditional: of two transactions rotating one token at once, one changes the row and the
# other, once the first commits, finds it rotated (a row lock on PostgreSQL and MariaDB,
# whose UPDATE reads the latest committed row; on SQLite the second transaction starts only
# after the first, BEGIN IMMEDIATE).
_ROTATE = (
    update(RefreshToken)
    .where(RefreshToken.token_hash == bindparam("hash"), RefreshToken.rotated_at.is_(None))
    .values(rotated_at=bindparam("now"))
)
_USED = (
    update(LoginSession)
    .where(LoginSession.id == bindparam("session_id"))
    .values(last_used_at=bindparam("now"))
)
# Revoking also ends it now, so that revoked and expired sessions are pruned alike.
_REVOKE = (
    update(LoginSession)
    .where(LoginSession.id == bindparam("session_id"), LoginSession.revoked_at.is_(None))
    .values(revoked_at=bindparam("now"), expires_at=bindparam("now"))
)


async def refresh(database: Database, token: str, settings: Settings) -> Issued:
    """Trade a refresh token for a new one (rotation) and the subject of a new access token.

    A token that was already traded (rotated) is a stolen copy or the original after its
    thief used it: the whole session is revoked, so that neither holder keeps it, and
    RefreshTokenReused is raised. Two concurrent refreshes with one token are the same
    case: one rotates it, and the other then finds it rotated and revokes the session.
    InvalidRefreshToken for an unknown token or one whose session has ended.

    Its own transaction, committed even when it refuses: the revocation must hold.
    """
    token_hash = hash_refresh_token(token)
    now = utcnow()
    async with database.engine.begin() as connection:
        found = (await connection.execute(_FIND_TOKEN, {"token_hash": token_hash})).one_or_none()
        if found is None or found.revoked_at is not None or found.expires_at <= now:
            error: InvalidRefreshToken = InvalidRefreshToken(INVALID_REFRESH_TOKEN)
        elif (
            found.rotated_at is not None
            or (await connection.execute(_ROTATE, {"hash": token_hash, "now": now})).rowcount != 1
        ):
            await connection.execute(_REVOKE, {"session_id": found.session_id, "now": now})
            error = RefreshTokenReused(REFRESH_TOKEN_REUSED)
        else:
            new_token, new_hash = _new_refresh_token()
            await connection.execute(_INSERT_TOKEN, {"hash": new_hash, "sid": found.session_id, "now": now})
            await connection.execute(_USED, {"session_id": found.session_id, "now": now})
            subject = TokenSubject(found.user_id, found.session_id, int(found.created_at.timestamp()))
            return Issued(subject, new_token, found.expires_at)
    raise error


async def revoke(connection: AsyncConnection, session_id: int) -> None:
    """End a session: its access and refresh tokens are refused from now on."""
    await connection.execute(_REVOKE, {"session_id": session_id, "now": utcnow()})


async def revoke_all(connection: AsyncConnection, user_id: int, *, keep: int | None = None) -> int:
    """End every session of `user_id` but `keep`; how many were ended."""
    now = utcnow()
    statement = update(LoginSession).where(
        LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None), LoginSession.expires_at > now
    )
    if keep is not None:
        statement = statement.where(LoginSession.id != keep)
    result = await connection.execute(statement.values(revoked_at=now, expires_at=now))
    count: int = result.rowcount
    return count


_END_OWN = (
    update(LoginSession)
    .where(
        LoginSession.id == bindparam("session_id"),
        LoginSession.user_id == bindparam("owner_id"),
        LoginSession.revoked_at.is_(None),
        LoginSession.expires_at > bindparam("now"),
    )
    .values(revoked_at=bindparam("now"), expires_at=bindparam("now"))
)


async def end_own(connection: AsyncConnection, user_id: int, session_id: int) -> None:
    """End one of the caller's sessions; NotFound if they have no such session (open)."""
    values = {"session_id": session_id, "owner_id": user_id, "now": utcnow()}
    if (await connection.execute(_END_OWN, values)).rowcount != 1:
        raise NotFound(f"session {session_id} not found")


_TOUCH = (
    update(LoginSession)
    .where(LoginSession.id == bindparam("session_id"), LoginSession.last_used_at < bindparam("stale"))
    .values(last_used_at=bindparam("now"))
)


def is_stale(last_used_at: datetime, now: datetime) -> bool:
    return last_used_at < now - TOUCH_INTERVAL


async def touch(connection: AsyncConnection, session_id: int, now: datetime) -> None:
    """Record a use of the session (call only when `is_stale`: a write, once a minute)."""
    await connection.execute(_TOUCH, {"session_id": session_id, "now": now, "stale": now - TOUCH_INTERVAL})


_SESSION_COLUMNS: AnySelect = select(
    LoginSession.id,
    LoginSession.created_at,
    LoginSession.last_used_at,
    LoginSession.expires_at,
    LoginSession.address,
    LoginSession.user_agent,
)


@cache
def _sessions_query(*, after: bool) -> AnySelect:
    query = _SESSION_COLUMNS.where(
        LoginSession.user_id == bindparam("user_id"),
        LoginSession.revoked_at.is_(None),
        LoginSession.expires_at > bindparam("now"),
    )
    if after:
        query = query.where(LoginSession.id < bindparam("before_id", type_=Integer))
    return query.order_by(LoginSession.id.desc()).limit(bindparam("limit"))


async def list_sessions(
    connection: AsyncConnection, caller: TokenSubject, params: PageParams
) -> Page[SessionRead]:
    """The caller's open sessions, newest first; the caller's own is `current`."""
    position = params.position("sessions", int)
    values: dict[str, Any] = {"user_id": caller.user_id, "now": utcnow(), "limit": params.limit + 1}
    if position is not None:
        (values["before_id"],) = position
    rows = list(await connection.execute(_sessions_query(after=position is not None), values))

    def build(row: Any) -> SessionRead:
        return SessionRead(
            id=row.id,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            expires_at=row.expires_at,
            address=row.address,
            user_agent=row.user_agent,
            current=row.id == caller.session_id,
        )

    return params.page("sessions", rows, key=lambda row: [row.id], build=build)


async def open_sessions(connection: AsyncConnection, user_id: int, limit: int) -> list[Any]:
    """Up to `limit` of the user's open sessions, newest first (`blogapi user sessions`)."""
    values = {"user_id": user_id, "now": utcnow(), "limit": limit}
    return list(await connection.execute(_sessions_query(after=False), values))


# SKIP LOCKED: a session another transaction holds is left for a later prune, so pruning
# never waits on (nor deadlocks with) a refresh or a logout. SQLite ignores FOR UPDATE.
_ENDED = (
    select(LoginSession.id)
    .where(LoginSession.expires_at < bindparam("now"))
    .limit(PRUNE_BATCH)
    .with_for_update(skip_locked=True)
)
_DELETE_ENDED = delete(LoginSession).where(
    LoginSession.id.in_(bindparam("ids", expanding=True)), LoginSession.expires_at < bindparam("now")
)


async def prune(connection: AsyncConnection, now: datetime) -> int:
    """Delete up to PRUNE_BATCH expired or revoked sessions (their refresh tokens go with
    them, by the foreign key's cascade); how many were deleted. Run by every login, last."""
    ids = list((await connection.scalars(_ENDED, {"now": now})).all())
    if not ids:
        return 0
    result = await connection.execute(_DELETE_ENDED, {"ids": ids, "now": now})
    count: int = result.rowcount
    return count
