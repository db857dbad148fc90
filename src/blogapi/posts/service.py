"""Posts and their tags. Never commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import Executable, Integer, Row, and_, bindparam, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from blogapi.db import (
    LIKE_ESCAPE,
    AnySelect,
    UTCDateTime,
    escape_like,
    fold_for_search,
    insert_missing,
    row_before,
    utcnow,
    violates,
)
from blogapi.errors import Forbidden, NotFound, Unauthorized
from blogapi.pagination import Page, PageParams
from blogapi.posts.models import Post, Tag, post_tag
from blogapi.posts.schemas import PostCreate, PostRead, PostUpdate, TagRead
from blogapi.preconditions import require_match
from blogapi.users import service as users_service
from blogapi.users.models import User
from blogapi.users.schemas import Author
from blogapi.users.service import CALLER_GONE, Account

# Writes load entities: the author joined, the tags in one more SELECT ... IN.
_POST_LOADS = (
    joinedload(Post.author).load_only(User.id, User.name),
    selectinload(Post.tags),
)

# Reads select just the columns a PostRead shows, in one statement whatever the page size:
# the author joined, the tags aggregated into one string per post (a tag name cannot
# contain the comma). No entities, no identity map: most of a read's cost otherwise.
# Each read statement is built once, with bound parameters for every value, so that its
# cache key (a walk over the whole statement) is computed once too, not per request.
# Each tag is looked up by its primary key: as a join, PostgreSQL may hash the whole tag
# table for every post of the page when it holds few tags.
_TAG_NAME = select(Tag.name).where(Tag.id == post_tag.c.tag_id).scalar_subquery()
_TAG_NAMES = (
    select(func.aggregate_strings(_TAG_NAME, ",")).where(post_tag.c.post_id == Post.id).scalar_subquery()
)
_POST_VIEW = select(
    Post.id,
    Post.title,
    Post.body,
    Post.created_at,
    Post.updated_at,
    Post.version,
    Post.author_id,
    User.name.label("author_name"),
    _TAG_NAMES.label("tag_names"),
).join(User, User.id == Post.author_id)
_POST_BY_ID = _POST_VIEW.where(Post.id == bindparam("post_id"))


class PostView(NamedTuple):
    post: PostRead
    version: int


def _view(row: Row[Any]) -> PostRead:
    return PostRead(
        id=row.id,
        title=row.title,
        body=row.body,
        author=Author(id=row.author_id, name=row.author_name),
        tags=sorted(row.tag_names.split(",")) if row.tag_names else [],
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def to_read(post: Post) -> PostRead:
    return PostRead(
        id=post.id,
        title=post.title,
        body=post.body,
        author=Author(id=post.author.id, name=post.author.name),
        tags=sorted(tag.name for tag in post.tags),  # as reads do: code point order, whatever the collation
        created_at=post.created_at,
        updated_at=post.updated_at,
    )


async def _tags_named(session: AsyncSession, names: Sequence[str]) -> list[Tag]:
    """The tags with these names, creating the missing ones without racing other requests."""
    if not names:
        return []
    await insert_missing(await session.connection(), Tag, [{"name": name} for name in names])
    return list(await session.scalars(select(Tag).where(Tag.name.in_(names)).order_by(Tag.name)))


# Creating a post is three Core statements in the request's transaction: the tags that are
# new, the post (its id and version returned), and its tag links selected by name. The
# unit of work would add a SELECT of the tags and most of a POST's CPU.
_INSERT_POST = insert(Post).returning(Post.id, Post.version)


@cache
def _link_tags(count: int) -> Executable:
    """The links of a new post to its `count` tags (at most TAGS_PER_POST_MAX statements).

    One bound parameter per name rather than an expanding IN: SQLAlchemy renders an
    expanding parameter into the SQL string at every execution (measured: ~10% of the
    POST's transaction).
    """
    names = [bindparam(f"name_{number}", type_=Tag.name.type) for number in range(count)]
    return insert(post_tag).from_select(
        ["post_id", "tag_id"], select(bindparam("post_id", type_=Integer), Tag.id).where(Tag.name.in_(names))
    )


async def create_post(connection: AsyncConnection, author: Account, data: PostCreate) -> PostView:
    now = utcnow()
    values = {
        "author_id": author.id,
        "title": data.title,
        "body": data.body,
        "created_at": now,
        "updated_at": now,
    }
    try:
        post_id, version = (await connection.execute(_INSERT_POST, values)).one()
    except IntegrityError as exc:
        # The author was deleted after the request found them (PostgreSQL and MariaDB read
        # without locking; on SQLite the write lock orders the two): the same 401 as a token
        # whose user is gone.
        if violates(exc, "fk_post_author_id_user"):
            raise Unauthorized(CALLER_GONE) from exc
        raise
    if data.tags:  # distinct and sorted by the schema
        await insert_missing(connection, Tag, [{"name": name} for name in data.tags])
        names = {f"name_{number}": name for number, name in enumerate(data.tags)}
        await connection.execute(_link_tags(len(data.tags)), {"post_id": post_id, **names})
    post = PostRead(
        id=post_id,
        title=data.title,
        body=data.body,
        author=Author(id=author.id, name=author.name),
        tags=data.tags,
        created_at=now,
        updated_at=now,
    )
    return PostView(post, version)


async def read_post(connection: AsyncConnection, post_id: int) -> PostView:
    row = (await connection.execute(_POST_BY_ID, {"post_id": post_id})).one_or_none()
    if row is None:
        raise NotFound(f"post {post_id} not found")
    return PostView(_view(row), row.version)


async def get_post(session: AsyncSession, post_id: int) -> Post:
    post = await session.scalar(select(Post).where(Post.id == post_id).options(*_POST_LOADS))
    if post is None:
        raise NotFound(f"post {post_id} not found")
    return post


async def _owned_post(session: AsyncSession, post_id: int, actor: Account, if_match: str | None) -> Post:
    # Lock the row first, so concurrent writers queue instead of failing on each other's
    # version (a no-op on SQLite, whose writers BEGIN IMMEDIATE one at a time). A separate
    # query: PostgreSQL cannot lock the nullable side of the author join.
    await session.execute(select(Post.id).where(Post.id == post_id).with_for_update())
    post = await get_post(session, post_id)
    if not (actor.is_admin or post.author_id == actor.id):
        raise Forbidden("only the author or an admin may change this post")
    require_match(if_match, post.version)
    return post


async def update_post(
    session: AsyncSession, post_id: int, data: PostUpdate, actor: Account, if_match: str | None
) -> Post:
    post = await _owned_post(session, post_id, actor, if_match)
    changes = data.model_dump(exclude_unset=True)
    if not changes:
        return post
    if "tags" in changes:
        post.tags = await _tags_named(session, changes.pop("tags"))
    for field, value in changes.items():
        setattr(post, field, value)
    # Also when only the tags (another table) changed: the post's version must move on.
    post.updated_at = utcnow()
    await session.flush()
    return post


async def delete_post(session: AsyncSession, post_id: int, actor: Account, if_match: str | None) -> None:
    post = await _owned_post(session, post_id, actor, if_match)
    await session.delete(post)
    await session.flush()


@cache
def _posts_query(*, by_author: bool, by_tag: bool, by_title: bool, after: bool) -> AnySelect:
    """The page statement for one combination of filters (16 at most); values are bound."""
    query = _POST_VIEW
    if by_author:
        query = query.where(Post.author_id == bindparam("author_id"))
    if by_tag:
        query = query.where(Post.tags.any(Tag.name == bindparam("tag")))
    if by_title:
        query = query.where(Post.title_folded.contains(bindparam("title"), escape=LIKE_ESCAPE))
    if after:  # newest first: the page continues with older posts, ties broken by id
        created_at = bindparam("after_created_at", type_=UTCDateTime)
        post_id = bindparam("after_id", type_=Integer)
        query = query.where(row_before(Post.created_at, Post.id, (created_at, post_id)))
    if not (by_tag or by_title):
        index = "ix_post_author_id_created_at_id" if by_author else "ix_post_created_at_id"
        for dialect in ("mysql", "mariadb"):
            query = query.prefix_with("STRAIGHT_JOIN", dialect=dialect).with_hint(
                Post, f"FORCE INDEX ({index})", dialect_name=dialect
            )
    return query.order_by(Post.created_at.desc(), Post.id.desc()).limit(bindparam("limit"))


async def list_posts(
    connection: AsyncConnection,
    params: PageParams,
    *,
    author_id: int | None = None,
    tag: str | None = None,
    title_contains: str | None = None,
) -> Page[PostRead]:
    position = params.position("posts", datetime.fromisoformat, int)
    query = _posts_query(
        by_author=author_id is not None,
        by_tag=tag is not None,
        by_title=bool(title_contains),
        after=position is not None,
    )
    values: dict[str, Any] = {"limit": params.limit + 1}
    if author_id is not None:
        values["author_id"] = author_id
    if tag is not None:
        values["tag"] = tag.lower()
    if title_contains:
        values["title"] = escape_like(fold_for_search(title_contains))
    if position is not None:
        values["after_created_at"], values["after_id"] = position
    rows = list(await connection.execute(query, values))
    return params.page("posts", rows, key=lambda row: [row.created_at.isoformat(), row.id], build=_view)


async def list_user_posts(connection: AsyncConnection, user_id: int, params: PageParams) -> Page[PostRead]:
    page = await list_posts(connection, params, author_id=user_id)
    if not page.items:
        # Only an empty page leaves open whether the user exists.
        await users_service.read_user(connection, user_id)
    return page


@cache
def _tags_query(*, after: bool) -> AnySelect:
    post_count = func.count(post_tag.c.post_id)
    query = (
        select(Tag.name, post_count.label("post_count"))
        .join(post_tag, post_tag.c.tag_id == Tag.id)
        .group_by(Tag.id, Tag.name)
        .order_by(post_count.desc(), Tag.name)
        .limit(bindparam("limit"))
    )
    if after:  # most used first: the page continues with rarer tags, ties in name order
        count = bindparam("after_count", type_=Integer)
        name = bindparam("after_name", type_=Tag.name.type)
        query = query.having(or_(post_count < count, and_(post_count == count, Tag.name > name)))
    return query


async def list_tags(connection: AsyncConnection, params: PageParams) -> Page[TagRead]:
    position = params.position("tags", int, str)
    values: dict[str, Any] = {"limit": params.limit + 1}
    if position is not None:
        values["after_count"], values["after_name"] = position
    rows = list(await connection.execute(_tags_query(after=position is not None), values))
    return params.page(
        "tags",
        rows,
        key=lambda row: [row.post_count, row.name],
        build=lambda row: TagRead(name=row.name, post_count=row.post_count),
    )
