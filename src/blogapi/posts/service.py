"""Posts and their tags. Never commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import Executable, Integer, Row, String, bindparam, func, insert, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import joinedload, selectinload
from sqlalchemy.orm.attributes import set_committed_value

from blogapi import search
from blogapi.db import (
    AnySelect,
    UTCDateTime,
    fold_for_search,
    row_at_or_after,
    row_before,
    utcnow,
    violates,
)
from blogapi.errors import Forbidden, NotFound, Unauthorized
from blogapi.pagination import Page, PageParams, SearchPage
from blogapi.posts.models import Post, Tag, post_tag
from blogapi.posts.schemas import PostCreate, PostRead, PostUpdate, TagRead
from blogapi.preconditions import etag, require_match
from blogapi.users import service as users_service
from blogapi.users.models import User
from blogapi.users.schemas import Author
from blogapi.users.service import CALLER_GONE, Account

# Writes load entities: the author joined, the tags in one more SELECT ... IN.
_POST_LOADS = (
    joinedload(Post.author).load_only(User.id, User.name, User.version),
    selectinload(Post.tags),
)

# Reads select just the columns a PostRead shows, in one statement whatever the page size:
# the author joined, the tags aggregated into one string per post (a tag name cannot
# contain the comma). No entities, no identity map: most of a read's cost otherwise.
# Each read statement is built once, with bound parameters for every value, so that its
# cache key (a walk over the whole statement) is computed once too, not per request.
# Each tag is looked up by its primary key: as a join, PostgreSQL may hash the whole tag
# table for every post of the page when it holds few tags.
# The post's links under their own name: `?tag=` selects these columns from post_tag too.
_LINK = post_tag.alias("link")
_TAG_NAME = select(Tag.name).where(Tag.id == _LINK.c.tag_id).scalar_subquery()
_TAG_NAMES = (
    select(func.aggregate_strings(_TAG_NAME, ",")).where(_LINK.c.post_id == Post.id).scalar_subquery()
)
# A PostRead's columns of the post itself; the author's name and the tags come beside them.
_POST_COLUMNS = (
    Post.id,
    Post.title,
    Post.body,
    Post.created_at,
    Post.updated_at,
    Post.version,
    Post.author_id,
)
_POST_VIEW = select(*_POST_COLUMNS, User.name.label("author_name"), _TAG_NAMES.label("tag_names")).join(
    User, User.id == Post.author_id
)
# A single post also reads its author's version: its ETag names both (a rename changes it).
_POST_BY_ID = _POST_VIEW.add_columns(User.version.label("author_version")).where(
    Post.id == bindparam("post_id")
)

# `?tag=` reads one tag's links, newest first, as a range of ix_post_tag_tag_id_created_at_post_id
# (a link carries its post's created_at): the tag's id is looked up once, by name (an unknown
# tag matches no link), then each post and its author by primary key. MariaDB is told the
# join order; left to itself it may walk the posts and probe each one's links.
_TAG_ID = select(Tag.id).where(Tag.name == bindparam("tag")).scalar_subquery()
_TAGGED_POST_VIEW = (
    select(*_POST_VIEW.selected_columns)
    .select_from(post_tag)
    .join(Post, Post.id == post_tag.c.post_id)
    .join(User, User.id == Post.author_id)
    .where(post_tag.c.tag_id == _TAG_ID)
    .prefix_with("STRAIGHT_JOIN", dialect="mysql")
)


class PostView(NamedTuple):
    post: PostRead
    etag: str


def post_etag(post: Post) -> str:
    """The ETag of a loaded post (its author loaded too): the post's version and its author's."""
    return etag(post.version, post.author.version)


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


@cache
def _count_tags(dialect: str) -> Executable:
    """Add each row's `post_count` to the tag named `name`, creating the tags that are new."""
    if dialect == "postgresql" or dialect == "sqlite":
        upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Tag)
        return upsert.on_conflict_do_update(
            index_elements=[Tag.name], set_={"post_count": Tag.post_count + upsert.excluded.post_count}
        )
    statement = mysql.insert(Tag)
    return statement.on_duplicate_key_update({"post_count": Tag.post_count + statement.inserted.post_count})


async def _count_links(connection: AsyncConnection, changes: dict[str, int]) -> None:
    """Change the post counts of the named tags by as many links as each gained (or lost).

    One statement per transaction, its rows in name order: an increment is atomic, and two
    transactions that change the same tags lock them in the same order, so they queue
    instead of deadlocking. A tag gaining a link is created if it is new, without racing
    another request creating it.
    """
    rows = [{"name": name, "post_count": change} for name, change in sorted(changes.items()) if change]
    if rows:
        await connection.execute(_count_tags(connection.dialect.name), rows)


# Creating a post is three Core statements in the request's transaction: the post (its id
# and version returned), its tags (the new ones created, every count incremented), and its
# tag links selected by name. The unit of work would add a SELECT of the tags and most of a
# POST's CPU.
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
        ["post_id", "tag_id", "created_at"],
        select(bindparam("post_id", type_=Integer), Tag.id, bindparam("created_at", type_=UTCDateTime)).where(
            Tag.name.in_(names)
        ),
    )


_UNLINK_TAGS = post_tag.delete().where(
    post_tag.c.post_id == bindparam("post_id"), post_tag.c.tag_id.in_(bindparam("tag_ids", expanding=True))
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
    await search.index_titles(connection, [(post_id, fold_for_search(data.title))])
    if data.tags:  # distinct and sorted by the schema
        await _count_links(connection, dict.fromkeys(data.tags, 1))
        names = {f"name_{number}": name for number, name in enumerate(data.tags)}
        await connection.execute(_link_tags(len(data.tags)), {"post_id": post_id, "created_at": now, **names})
    post = PostRead(
        id=post_id,
        title=data.title,
        body=data.body,
        author=Author(id=author.id, name=author.name),
        tags=data.tags,
        created_at=now,
        updated_at=now,
    )
    return PostView(post, etag(version, author.version))


async def read_post(connection: AsyncConnection, post_id: int) -> PostView:
    row = (await connection.execute(_POST_BY_ID, {"post_id": post_id})).one_or_none()
    if row is None:
        raise NotFound(f"post {post_id} not found")
    return PostView(_view(row), etag(row.version, row.author_version))


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
    require_match(if_match, post_etag(post))
    return post


async def update_post(
    session: AsyncSession, post_id: int, data: PostUpdate, actor: Account, if_match: str | None
) -> Post:
    post = await _owned_post(session, post_id, actor, if_match)
    changes = data.model_dump(exclude_unset=True)
    if not changes:
        return post
    if "tags" in changes:
        await _retag(session, post, changes.pop("tags"))
    for field, value in changes.items():
        setattr(post, field, value)
    # Also when only the tags (another table) changed: the post's version must move on.
    post.updated_at = utcnow()
    await session.flush()
    if "title" in changes:
        await search.index_titles(await session.connection(), [(post.id, post.title_folded)], replace=True)
    return post


async def _retag(session: AsyncSession, post: Post, names: Sequence[str]) -> None:
    """Replace the (locked) post's tags with `names`: links and counts in Core, so that the
    new links carry the post's created_at and each count moves with its link."""
    kept, current = set(names), {tag.name for tag in post.tags}
    removed = [tag for tag in post.tags if tag.name not in kept]
    added = [name for name in names if name not in current]
    connection = await session.connection()
    await _count_links(connection, {tag.name: -1 for tag in removed} | dict.fromkeys(added, 1))
    if removed:
        await connection.execute(_UNLINK_TAGS, {"post_id": post.id, "tag_ids": [tag.id for tag in removed]})
    if added:
        values = {f"name_{number}": name for number, name in enumerate(added)}
        await connection.execute(
            _link_tags(len(added)), {"post_id": post.id, "created_at": post.created_at, **values}
        )
    tags = (
        list(await session.scalars(select(Tag).where(Tag.name.in_(names)).order_by(Tag.name)))
        if names
        else []
    )
    # The links are written: the collection is set as loaded, not as a change to flush.
    set_committed_value(post, "tags", tags)


async def delete_post(session: AsyncSession, post_id: int, actor: Account, if_match: str | None) -> None:
    post = await _owned_post(session, post_id, actor, if_match)
    await _count_links(await session.connection(), {tag.name: -1 for tag in post.tags})
    await session.delete(post)
    await session.flush()


_AUTHOR_POSTS_FOR_UPDATE = (
    select(Post.id).where(Post.author_id == bindparam("author_id")).order_by(Post.id).with_for_update()
)
_AUTHOR_LINKS_PER_TAG = (
    select(Tag.name, func.count().label("links"))
    .join(post_tag, post_tag.c.tag_id == Tag.id)
    .join(Post, Post.id == post_tag.c.post_id)
    .where(Post.author_id == bindparam("author_id"))
    .group_by(Tag.name)
)


async def release_author_tags(session: AsyncSession, author_id: int) -> None:
    """Uncount the tags of every post by `author_id`, whose deletion cascades to them.

    The database deletes the posts and links without the service seeing them: their tags'
    counts go down first, in the same transaction. The posts are locked first, so a retag
    that is in flight commits before their links are counted (posts before tags, the order
    every writer locks in).
    """
    connection = await session.connection()
    await connection.execute(_AUTHOR_POSTS_FOR_UPDATE, {"author_id": author_id})
    links = await connection.execute(_AUTHOR_LINKS_PER_TAG, {"author_id": author_id})
    await _count_links(connection, {name: -count for name, count in links})


@cache
def _posts_query(
    *, by_author: bool, by_tag: bool, by_title: bool, after: bool, floor: bool = False
) -> AnySelect:
    """The page statement for one combination of filters; values are bound.

    `by_title` filters a walk of the list's page-order index by the title (search.py),
    down to `floor` (the last row the walk may read) when set.
    """
    query = _TAGGED_POST_VIEW if by_tag else _POST_VIEW
    # A tag's posts are in its links' order: the same (created_at, id), from the index.
    created_at_column, id_column = _order_columns(by_tag=by_tag)
    if by_author:
        query = query.where(Post.author_id == bindparam("author_id"))
    if by_title:
        query = query.where(search.walk_filter(Post.title_folded, bindparam("title", type_=String)))
    if after:  # newest first: the page continues with older posts, ties broken by id
        created_at = bindparam("after_created_at", type_=UTCDateTime)
        post_id = bindparam("after_id", type_=Integer)
        query = query.where(row_before(created_at_column, id_column, (created_at, post_id)))
    if floor:
        created_at = bindparam("floor_created_at", type_=UTCDateTime)
        post_id = bindparam("floor_id", type_=Integer)
        query = query.where(row_at_or_after(created_at_column, id_column, (created_at, post_id)))
    if not by_tag:
        query = _hinted(query, by_author=by_author)
    return query.order_by(created_at_column.desc(), id_column.desc()).limit(bindparam("limit"))


# The posts the text index found, when they are few (search.py): the page's ids are picked
# in Python, and the posts read by primary key (a tag's links by theirs, to keep the tagged).
# The author's name by a correlated lookup, not a join: for a list of ids without a LIMIT,
# PostgreSQL may hash-join the whole user table (seen in CI's plan test on a grown table).
_AUTHOR_NAME = select(User.name).where(User.id == Post.author_id).scalar_subquery()
_POSTS_AMONG = select(*_POST_COLUMNS, _AUTHOR_NAME.label("author_name"), _TAG_NAMES.label("tag_names")).where(
    Post.id.in_(bindparam("ids", expanding=True))
)
_TAGGED_AMONG = select(post_tag.c.post_id).where(
    post_tag.c.tag_id == _TAG_ID, post_tag.c.post_id.in_(bindparam("ids", expanding=True))
)


def _order_columns(*, by_tag: bool) -> tuple[Any, Any]:
    return (post_tag.c.created_at, post_tag.c.post_id) if by_tag else (Post.created_at, Post.id)


def _hinted(query: AnySelect, *, by_author: bool) -> AnySelect:
    """MariaDB is told the join order and the index of the page's order."""
    index = "ix_post_author_id_created_at_id" if by_author else "ix_post_created_at_id"
    for dialect in ("mysql", "mariadb"):
        query = query.prefix_with("STRAIGHT_JOIN", dialect=dialect).with_hint(
            Post, f"FORCE INDEX ({index})", dialect_name=dialect
        )
    return query


@cache
def _walk_floor(*, by_author: bool, by_tag: bool, after: bool) -> AnySelect:
    """The position of the last post a search's walk may read: the `offset`-th of the list
    from the page's position (and the next one's, which says the list goes on), read from
    the list's page-order index alone."""
    created_at_column, id_column = _order_columns(by_tag=by_tag)
    query = select(created_at_column.label("created_at"), id_column.label("id"))
    query = query.where(post_tag.c.tag_id == _TAG_ID) if by_tag else _hinted(query, by_author=by_author)
    if by_author and not by_tag:  # with a tag, the walk is of the tag's links, whoever wrote them
        query = query.where(Post.author_id == bindparam("author_id"))
    if after:
        created_at = bindparam("after_created_at", type_=UTCDateTime)
        post_id = bindparam("after_id", type_=Integer)
        query = query.where(row_before(created_at_column, id_column, (created_at, post_id)))
    return query.order_by(created_at_column.desc(), id_column.desc()).limit(2).offset(bindparam("offset"))


async def list_posts(
    connection: AsyncConnection,
    params: PageParams,
    *,
    author_id: int | None = None,
    tag: str | None = None,
    title_contains: str | None = None,
    max_matches: int = 1000,
) -> SearchPage[PostRead]:
    position = params.position("posts", datetime.fromisoformat, int)
    values: dict[str, Any] = {"limit": params.limit + 1}
    if author_id is not None:
        values["author_id"] = author_id
    if tag is not None:
        values["tag"] = tag.lower()
    if position is not None:
        values["after_created_at"], values["after_id"] = position
    filters = {"by_author": author_id is not None, "by_tag": tag is not None, "after": position is not None}
    walked_to: list[Any] | None = None
    if not title_contains:
        rows = list(await connection.execute(_posts_query(by_title=False, **filters), values))
    else:
        folded = fold_for_search(title_contains)
        found = (
            await search.post_matches(connection, folded, max_matches + 1)
            if search.indexable(folded)
            else None
        )
        if found is not None and len(found) <= max_matches:
            rows = await _posts_among(connection, params, found, position, author_id=author_id, tag=tag)
        else:
            values["title"] = folded
            values["offset"] = max_matches - 1
            ends = list(await connection.execute(_walk_floor(**filters), values))
            floor = ends[0] if len(ends) > 1 else None  # else the walk reaches the list's end
            if floor is not None:
                values["floor_created_at"], values["floor_id"] = floor
                walked_to = [floor.created_at.isoformat(), floor.id]
            query = _posts_query(by_title=True, floor=floor is not None, **filters)
            rows = list(await connection.execute(query, values))
    return params.search_page(
        "posts", rows, key=lambda row: [row.created_at.isoformat(), row.id], build=_view, walked_to=walked_to
    )


async def _posts_among(
    connection: AsyncConnection,
    params: PageParams,
    found: list[tuple[datetime, int, int]],
    position: list[Any] | None,
    *,
    author_id: int | None,
    tag: str | None,
) -> list[Row[Any]]:
    """The page's rows (and the one after it) among the posts the text index `found`."""
    ids = [
        post_id
        for created_at, post_id, author in sorted(found, reverse=True)
        if (author_id is None or author == author_id)
        and (position is None or (created_at, post_id) < (position[0], position[1]))
    ]
    if tag is not None and ids:
        tagged = set(await connection.scalars(_TAGGED_AMONG, {"tag": tag.lower(), "ids": ids}))
        ids = [post_id for post_id in ids if post_id in tagged]
    ids = ids[: params.limit + 1]
    if not ids:
        return []
    rows = list(await connection.execute(_POSTS_AMONG, {"ids": ids}))
    return sorted(rows, key=lambda row: (row.created_at, row.id), reverse=True)


async def list_user_posts(connection: AsyncConnection, user_id: int, params: PageParams) -> Page[PostRead]:
    page = await list_posts(connection, params, author_id=user_id)
    if not page.items:
        # Only an empty page leaves open whether the user exists.
        await users_service.read_user(connection, user_id)
    return page


# GET /tags, most used first and ties by name, in ix_tag_post_count_name's order. A page
# after (count, name) is the rest of that count's tags, then (only if the page is not full)
# the rarer tags: each a range of the index, where one statement with an OR would read and
# skip every tag of that count before the position. Unused tags (count 0) are not listed.
_TAG_COUNTS = (
    select(Tag.name, Tag.post_count)
    .where(Tag.post_count > 0)
    .order_by(Tag.post_count.desc(), Tag.name)
    .limit(bindparam("limit"))
)
_TAGS_TIED_AFTER = _TAG_COUNTS.where(
    Tag.post_count == bindparam("after_count", type_=Integer),
    Tag.name > bindparam("after_name", type_=Tag.name.type),
)
_TAGS_RARER_THAN = _TAG_COUNTS.where(Tag.post_count < bindparam("after_count", type_=Integer))


async def list_tags(connection: AsyncConnection, params: PageParams) -> Page[TagRead]:
    position = params.position("tags", int, str)
    wanted = params.limit + 1
    if position is None:
        rows = list(await connection.execute(_TAG_COUNTS, {"limit": wanted}))
    else:
        count, name = position
        rows = list(
            await connection.execute(
                _TAGS_TIED_AFTER, {"after_count": count, "after_name": name, "limit": wanted}
            )
        )
        if len(rows) < wanted:
            rarer = {"after_count": count, "limit": wanted - len(rows)}
            rows += await connection.execute(_TAGS_RARER_THAN, rarer)
    return params.page(
        "tags",
        rows,
        key=lambda row: [row.post_count, row.name],
        build=lambda row: TagRead(name=row.name, post_count=row.post_count),
    )
