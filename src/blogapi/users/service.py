"""Accounts: sign-up, login, and who may see and change what. Never commits."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from blogapi.auth.security import hash_password
from blogapi.config import Settings
from blogapi.db import violates
from blogapi.errors import Conflict, Forbidden, NotFound
from blogapi.pagination import Page, PageParams
from blogapi.preconditions import require_match
from blogapi.users.models import User
from blogapi.users.schemas import UserCreate, UserRead, UserUpdate

EMAIL_TAKEN = "an account with this email already exists"


def can_manage(actor: User | None, user: User) -> bool:
    return actor is not None and (actor.is_admin or actor.id == user.id)


def to_read(user: User, viewer: User | None) -> UserRead:
    """A user as `viewer` may see them: the email only to the user themself and admins."""
    return UserRead(
        id=user.id,
        name=user.name,
        email=user.email if can_manage(viewer, user) else None,
        is_admin=user.is_admin,
        created_at=user.created_at,
        updated_at=user.updated_at,
    )


async def _flush_unique_email(session: AsyncSession) -> None:
    # The unique index decides, not a prior SELECT: two sign-ups can pass a check together.
    try:
        await session.flush()
    except IntegrityError as exc:
        if violates(exc, "uq_user_email"):
            raise Conflict(EMAIL_TAKEN) from exc
        raise


async def create_user(
    session: AsyncSession, data: UserCreate, settings: Settings, *, is_admin: bool = False
) -> User:
    password_hash = await hash_password(data.password, concurrency=settings.hash_concurrency)
    user = User(name=data.name, email=data.email, password_hash=password_hash, is_admin=is_admin)
    session.add(user)
    await _flush_unique_email(session)
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


async def list_users(
    session: AsyncSession, params: PageParams, viewer: User | None, name_contains: str | None
) -> Page[UserRead]:
    query = select(User).order_by(User.id).limit(params.limit + 1)
    position = params.position("users", int)
    if position is not None:
        (after_id,) = position
        query = query.where(User.id > after_id)
    if name_contains:
        query = query.where(User.name.icontains(name_contains, autoescape=True))
    users = list(await session.scalars(query))
    return params.page("users", users, key=lambda user: [user.id], build=lambda user: to_read(user, viewer))


async def update_user(
    session: AsyncSession,
    user_id: int,
    data: UserUpdate,
    actor: User,
    settings: Settings,
    if_match: str | None,
) -> User:
    user = await get_user(session, user_id, for_update=True)
    if not can_manage(actor, user):
        raise Forbidden("only the user themself or an admin may change this user")
    require_match(if_match, user.version)
    changes = data.model_dump(exclude_unset=True)
    if "is_admin" in changes and changes["is_admin"] != user.is_admin and not actor.is_admin:
        raise Forbidden("only an admin may change is_admin")
    if "password" in changes:
        changes["password_hash"] = await hash_password(
            changes.pop("password"), concurrency=settings.hash_concurrency
        )
        # Every token issued before the change stops working.
        changes["token_version"] = user.token_version + 1
    for field, value in changes.items():
        setattr(user, field, value)
    await _flush_unique_email(session)
    return user


async def delete_user(session: AsyncSession, user_id: int, actor: User, if_match: str | None) -> None:
    user = await get_user(session, user_id, for_update=True)
    if not can_manage(actor, user):
        raise Forbidden("only the user themself or an admin may delete this user")
    require_match(if_match, user.version)
    # The database cascades to the user's posts (passive_deletes): no rows are loaded.
    await session.delete(user)
    await session.flush()
