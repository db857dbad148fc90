"""Accounts: sign-up, login, and who may see and change what. Never commits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import Integer, String, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from blogapi import search
from blogapi.auth import accounts, throttle
from blogapi.auth import service as auth_service
from blogapi.auth.security import TokenSubject, hash_password
from blogapi.auth.sessions import service as sessions_service
from blogapi.auth.sessions.models import LoginSession
from blogapi.config import Settings
from blogapi.db import (
    AnyRow,
    AnySelect,
    Database,
    fold_for_search,
    utcnow,
    violates,
)
from blogapi.errors import EmailTaken, Forbidden, NotFound, ReauthenticationRequired, Unauthorized
from blogapi.mail import Mail
from blogapi.pagination import PageParams, SearchPage
from blogapi.preconditions import etag, require_match
from blogapi.users.models import User
from blogapi.users.schemas import UserCreate, UserRead, UserUpdate, normalize_email

EMAIL_TAKEN = "an account with this email already exists"
CALLER_GONE = "the access token is missing, invalid or expired"
"""What a token whose user no longer exists gets (auth.dependencies.INVALID_TOKEN)."""

Account = User | AnyRow
"""A user as an entity (writes) or as a row of `_USER_COLUMNS` (reads)."""

# Reads select these columns, never the password hash, and build responses from the rows.
_USER_COLUMNS: AnySelect = select(
    User.id,
    User.name,
    User.email,
    User.is_admin,
    User.is_active,
    User.email_verified,
    User.created_at,
    User.updated_at,
    User.version,
)
_USER_BY_ID = _USER_COLUMNS.where(User.id == bindparam("user_id"))
# The caller of a request: their user row, if the token's session is theirs and open. One
# statement, two primary-key lookups: what the token-version check it replaces cost.
_CALLER = (
    _USER_COLUMNS.add_columns(LoginSession.last_used_at.label("session_last_used_at"))
    .join_from(User, LoginSession, LoginSession.user_id == User.id)
    .where(
        User.id == bindparam("user_id"),
        LoginSession.id == bindparam("session_id"),
        LoginSession.revoked_at.is_(None),
        User.is_active.is_(True),
    )
)


def can_manage(actor: Account | None, user: Account) -> bool:
    return actor is not None and (actor.is_admin or actor.id == user.id)


def user_etag(user: Account, viewer: Account | None) -> str:
    """The ETag of `user` as `viewer` sees them: with the email (`"7"`) or without (`"7.public"`).

    If-Match compares with the first: only those who see the email may change the user.
    """
    return etag(user.version) if can_manage(viewer, user) else etag(user.version, "public")


def to_read(user: Account, viewer: Account | None) -> UserRead:
    """A user as `viewer` may see them: the email only to the user themself and admins."""
    return UserRead(
        id=user.id,
        name=user.name,
        email=user.email if can_manage(viewer, user) else None,
        is_admin=user.is_admin,
        is_active=user.is_active if can_manage(viewer, user) else None,
        email_verified=user.email_verified if can_manage(viewer, user) else None,
        created_at=user.created_at,
        updated_at=user.updated_at,
    )


async def _flush_unique_email(session: AsyncSession) -> None:
    # The unique index decides, not a prior SELECT: two sign-ups can pass a check together.
    try:
        await session.flush()
    except IntegrityError as exc:
        if violates(exc, "uq_user_email"):
            raise EmailTaken(EMAIL_TAKEN) from exc
        raise


async def admit_signup(database: Database, address: str, settings: Settings) -> None:
    """Count a sign-up from `address`, or refuse it (TooManyRequests), before it is hashed.

    Its own short transaction, so the count holds whatever becomes of the sign-up: a burst
    of anonymous sign-ups must not queue real logins behind its hashes.
    """
    async with database.engine.begin() as connection:
        await throttle.reserve_signup(connection, address, settings)


async def password_hash_for(data: UserCreate, settings: Settings) -> str:
    """The sign-up's Argon2 hash. Computed before the request's transaction touches the
    database: tens of milliseconds in a thread must not hold a pooled connection (nor, on
    SQLite, the write lock)."""
    return await hash_password(data.password, concurrency=settings.hash_concurrency)


async def create_user(
    session: AsyncSession, data: UserCreate, settings: Settings, *, is_admin: bool = False
) -> User:
    return await insert_user(session, data, await password_hash_for(data, settings), is_admin=is_admin)


async def insert_user(
    session: AsyncSession, data: UserCreate, password_hash: str, *, is_admin: bool = False
) -> User:
    user = User(name=data.name, email=data.email, password_hash=password_hash, is_admin=is_admin)
    session.add(user)
    await _flush_unique_email(session)
    await search.index_names(await session.connection(), [(user.id, user.name_folded)])
    return user


async def find_user(connection: AsyncConnection, user_id: int) -> AnyRow | None:
    return (await connection.execute(_USER_BY_ID, {"user_id": user_id})).one_or_none()


async def find_caller(connection: AsyncConnection, caller: TokenSubject) -> AnyRow | None:
    """The caller's user row, or None if the user is gone or the token's session has ended.

    The row also holds the session's `session_last_used_at`.
    """
    values = {"user_id": caller.user_id, "session_id": caller.session_id}
    return (await connection.execute(_CALLER, values)).one_or_none()


async def read_user(connection: AsyncConnection, user_id: int) -> AnyRow:
    user = await find_user(connection, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


async def get_user(session: AsyncSession, user_id: int, *, for_update: bool = False) -> User:
    """The user, or NotFound. `for_update` locks the row for the rest of the transaction.

    Writers then queue on the row instead of failing on each other's version. SQLite has no
    row locks; there writers are already serialized by BEGIN IMMEDIATE.
    """
    if for_update:
        query = select(User).where(User.id == user_id).with_for_update()
        user = await session.scalar(query.execution_options(populate_existing=True))
    else:
        user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


@cache
def _users_query(*, by_name: bool, after: bool, floor: bool = False) -> AnySelect:
    """The page statement: `by_name` filters a walk of the id order (search.py), down to
    `floor`, the last id the walk may read, when set."""
    query = _USER_COLUMNS
    if by_name:
        query = query.where(search.walk_filter(User.name_folded, bindparam("name", type_=String)))
    if after:
        query = query.where(User.id > bindparam("after_id", type_=Integer))
    if floor:
        query = query.where(User.id <= bindparam("floor_id", type_=Integer))
    return query.order_by(User.id).limit(bindparam("limit"))


# The users the text index found, when they are few: a page of them, by primary key.
_USERS_AMONG = _USER_COLUMNS.where(User.id.in_(bindparam("ids", expanding=True)))


@cache
def _walk_floor(*, after: bool) -> AnySelect:
    """The last id a search's walk may read, the `offset`-th from the page's position (and
    the next, which says the list goes on)."""
    query = select(User.id)
    if after:
        query = query.where(User.id > bindparam("after_id", type_=Integer))
    return query.order_by(User.id).limit(2).offset(bindparam("offset"))


async def list_users(
    connection: AsyncConnection,
    params: PageParams,
    viewer: Account | None,
    name_contains: str | None,
    *,
    max_matches: int = 1000,
) -> SearchPage[UserRead]:
    position = params.position("users", int)
    values: dict[str, Any] = {"limit": params.limit + 1}
    if position is not None:
        (values["after_id"],) = position
    after = position is not None
    walked_to: list[Any] | None = None
    if not name_contains:
        query = _users_query(by_name=False, after=after)
    else:
        folded = fold_for_search(name_contains)
        found = (
            await search.user_matches(connection, folded, max_matches + 1)
            if search.indexable(folded)
            else None
        )
        if found is not None and len(found) <= max_matches:
            ids = sorted(user_id for user_id in found if position is None or user_id > position[0])
            rows = (
                list(await connection.execute(_USERS_AMONG, {"ids": ids[: params.limit + 1]})) if ids else []
            )
            rows.sort(key=lambda user: user.id)
            return params.search_page(
                "users", rows, key=lambda user: [user.id], build=lambda user: to_read(user, viewer)
            )
        values["name"] = folded
        values["offset"] = max_matches - 1
        ends = list(await connection.scalars(_walk_floor(after=after), values))
        floor = ends[0] if len(ends) > 1 else None  # else the walk reaches the list's end
        if floor is not None:
            values["floor_id"] = floor
            walked_to = [floor]
        query = _users_query(by_name=True, after=after, floor=floor is not None)
    rows = list(await connection.execute(query, values))
    return params.search_page(
        "users",
        rows,
        key=lambda user: [user.id],
        build=lambda user: to_read(user, viewer),
        walked_to=walked_to,
    )


RECENT_LOGIN_REQUIRED = (
    "changing your own password or email needs your current_password, or a login within the last"
    " {minutes} minutes"
)


async def prepare_update(
    database: Database, caller: TokenSubject, user_id: int, data: UserUpdate, address: str, settings: Settings
) -> str | None:
    """Check the proof a change needs, and hash its new password (None without one).

    Before the request's transaction takes a connection: the Argon2 work (tens of
    milliseconds in a thread) must not hold a pooled connection and the user's row lock,
    nor, on SQLite, the whole database's write lock. Changing one's own password or email
    needs a recent login or the current password: a stolen token alone must not take the
    account over.
    """
    needs_proof = caller.user_id == user_id and (data.password is not None or data.email is not None)
    if not needs_proof and data.password is None:
        return None
    # A revoked token costs no hash: it is checked first, on a connection closed at once.
    async with database.read_engine.connect() as connection:
        me = await find_caller(connection, caller)
    if me is None:
        raise Unauthorized(CALLER_GONE)
    if needs_proof and not caller.authenticated_since(
        utcnow() - timedelta(minutes=settings.recent_login_minutes)
    ):
        if data.current_password is None:
            raise ReauthenticationRequired(
                RECENT_LOGIN_REQUIRED.format(minutes=settings.recent_login_minutes)
            )
        await auth_service.confirm_password(database, me.email, data.current_password, address, settings)
    if data.password is None:
        return None
    return await hash_password(data.password, concurrency=settings.hash_concurrency)


async def update_user(
    session: AsyncSession,
    user_id: int,
    data: UserUpdate,
    actor: Account,
    password_hash: str | None,
    if_match: str | None,
    *,
    actor_session: int,
    settings: Settings,
    outbox: list[Mail],
) -> User:
    """Apply `data`; `password_hash` is that of `data.password`, from `prepare_update`.

    A new password ends every session of the user but the one changing it (`actor_session`):
    one's own other devices, or all of them when an admin sets it.

    A new email is mailed a verification token and the old one a notice (appended to
    `outbox`, to send after commit). With REQUIRE_VERIFIED_EMAIL the email stays as it is
    until the new address is verified; without, it changes now, unverified.
    """
    user = await get_user(session, user_id, for_update=True)
    if not can_manage(actor, user):
        raise Forbidden("only the user themself or an admin may change this user")
    require_match(if_match, etag(user.version))
    changes = data.model_dump(exclude_unset=True, exclude={"current_password"})
    if "is_admin" in changes and changes["is_admin"] != user.is_admin and not actor.is_admin:
        raise Forbidden("only an admin may change is_admin")
    if "is_active" in changes and changes["is_active"] != user.is_active:
        if not actor.is_admin:
            raise Forbidden("only an admin may disable or enable an account")
        if not changes["is_active"]:
            # Disabled: every session ends now (the caller's too, if they disable themself).
            await sessions_service.revoke_all(await session.connection(), user.id)
    if "password" in changes:
        del changes["password"]
        assert password_hash is not None, "prepare_update hashes the new password"
        changes["password_hash"] = password_hash
        keep = actor_session if actor.id == user.id else None
        await sessions_service.revoke_all(await session.connection(), user.id, keep=keep)
    if "email" in changes:
        new_email = changes.pop("email")
        if new_email != user.email:
            outbox += await accounts.change_email(
                await session.connection(), user.id, user.email, new_email, settings
            )
            if not settings.require_verified_email:
                changes["email"] = new_email
                changes["email_verified"] = False
    for field, value in changes.items():
        setattr(user, field, value)
    await _flush_unique_email(session)
    if "name" in changes:
        await search.index_names(await session.connection(), [(user.id, user.name_folded)], replace=True)
    return user


async def user_id_of(session: AsyncSession, email: str) -> int:
    """The id of the account with this email (normalised as logins normalise it), or NotFound."""
    email = normalize_email(email.strip())
    user_id = await session.scalar(select(User.id).where(User.email == email))
    if user_id is None:
        raise NotFound(f"no user has the email {email}")
    return user_id


async def set_active(session: AsyncSession, email: str, *, is_active: bool) -> User:
    """Disable or enable the account with this email (`blogapi user disable/enable`).

    Disabling ends every session of the account: its tokens are refused at once.
    """
    email = normalize_email(email.strip())
    user = await session.scalar(select(User).where(User.email == email).with_for_update())
    if user is None:
        raise NotFound(f"no user has the email {email}")
    if user.is_active != is_active:
        user.is_active = is_active
        await session.flush()
    if not is_active:
        await sessions_service.revoke_all(await session.connection(), user.id)
    return user


async def set_admin(session: AsyncSession, email: str, *, is_admin: bool) -> User:
    """Promote or demote the account with this email (`blogapi user promote/demote`).

    Like a change through the API it applies to the user's existing tokens at once: every
    request reads is_admin from the user's row, not from the token.
    """
    email = normalize_email(email.strip())
    user = await session.scalar(select(User).where(User.email == email).with_for_update())
    if user is None:
        raise NotFound(f"no user has the email {email}")
    user.is_admin = is_admin
    await session.flush()
    return user


async def delete_user(
    session: AsyncSession,
    user_id: int,
    actor: Account,
    if_match: str | None,
    *,
    release_posts: Callable[[AsyncSession, int], Awaitable[None]],
) -> None:
    """Delete the user; `release_posts(session, user_id)` first undoes what their posts hold
    outside the rows the database cascades to (the posts domain's tag counts)."""
    user = await get_user(session, user_id, for_update=True)
    if not can_manage(actor, user):
        raise Forbidden("only the user themself or an admin may delete this user")
    require_match(if_match, etag(user.version))
    await release_posts(session, user.id)
    # The database cascades to the user's posts (passive_deletes): no rows are loaded.
    await session.delete(user)
    await session.flush()
