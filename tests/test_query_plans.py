"""Every list statement reads O(page) rows: its plan seeks an index, on every backend.

Issue 16: at a million posts a keyset page written as `created_at < :c OR (created_at = :c
AND id < :id)` was a filter over every newer row (1.7 s at the deep end on PostgreSQL),
and MariaDB joined every post to its author and sorted them for the first page. A plan
keeps that shape at any size, so a small table shows it: PostgreSQL runs with sequential
scans disabled (a plan that still scans has no index to use), MariaDB and SQLite as they
are. A statement fails on a scan of `post`, `user`, `post_tag` or `tag` (PostgreSQL: a
sequential scan, or an index read without an index condition; MariaDB: `ALL`, `index`;
SQLite: `SCAN`), or on a sort (PostgreSQL `Sort`, MariaDB `Using filesort` or `Using
temporary`, SQLite `USE TEMP B-TREE`). The one scan allowed is the first page's: the
index of the page's order, read from its start by the driving table, unfiltered, up to the
LIMIT.

`?q=` (search.py) is a text index lookup of at most the cap's matches (PostgreSQL's GIN,
SQLite's FTS5, MariaDB's trigram table, driven from its rarest trigram), then a page of
them by primary key; or, for a term too common or too short, a walk of the list's index
between the page's position and a floor at most the cap away. Each of these statements is
below; the MariaDB trigram lookup's aliases (g0, g1...) are checked like the tables.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import product
from typing import Any

import pytest
from conftest import StatementCounter
from sqlalchemy import event, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from blogapi import search
from blogapi.auth.sessions import service as sessions_service
from blogapi.auth.sessions.models import LoginSession
from blogapi.db import AnySelect, Database, fold_for_search
from blogapi.posts import service as posts_service
from blogapi.posts.models import Post, Tag, post_tag
from blogapi.users import service as users_service
from blogapi.users.models import User

TABLES = ("post", "user", "post_tag", "tag", "session")
# MariaDB's search tables, as its trigram lookup names them (search._join_trigrams).
TRIGRAM_ALIASES = re.compile(r"g[0-9]+")
PAGE = 21  # a page of 20 and the row that says whether there is a next one
USERS, POSTS, TAGS = 30, 2000, 200
AUTHOR = "the id of an author of a few pages, among the many pages of others"
SESSION = "the id of one of that author's sessions"
SESSIONS_PER_USER = 20
START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[str], AnySelect]
    """The statement, for a dialect's name."""
    values: dict[str, Any] | Callable[[str], dict[str, Any]]
    first_page: bool = False
    """Unfiltered: the driving table may read the index of its order from the start."""


def _posts(values: dict[str, Any], **filters: bool) -> Case:
    combination = {
        "by_author": False,
        "by_tag": False,
        "by_title": False,
        "after": False,
        "floor": False,
    } | filters
    name = "posts" + "".join(f"_{key}" for key, on in combination.items() if on)
    return Case(
        name,
        lambda _dialect: posts_service._posts_query(**combination),
        {"limit": PAGE, **values},
        first_page=not any(combination.values()),
    )


def _walk_floor(values: dict[str, Any], **filters: bool) -> Case:
    combination = {"by_author": False, "by_tag": False, "after": False} | filters
    name = "posts_walk_floor" + "".join(f"_{key}" for key, on in combination.items() if on)
    return Case(
        name,
        lambda _dialect: posts_service._walk_floor(**combination),
        {"offset": SEARCH_CAP - 1, **values},
        first_page=not any(combination.values()),
    )


def _probe(statement: Callable[[str, int], AnySelect], term: str) -> tuple[Callable[[str], AnySelect], Any]:
    """A text index lookup (search.py) of `term`, as the service builds it on each backend."""
    folded = fold_for_search(term)
    return (
        lambda dialect: statement(dialect, search._probe_values(folded, SEARCH_CAP + 1, dialect)[0]),
        lambda dialect: search._probe_values(folded, SEARCH_CAP + 1, dialect)[1],
    )


POSITION = {"after_created_at": START + timedelta(minutes=POSTS // 2), "after_id": POSTS // 2}
# A search's walk (a term too common or too short for the text index) reads down to the
# SEARCH_CAP-th post of the list from its position, at most.
SEARCH_CAP = PAGE
FLOOR = {"floor_created_at": START + timedelta(minutes=POSTS // 4), "floor_id": POSTS // 4}
# The posts the text index found, when they are few: a page of them by primary key (and,
# with a tag, at most the cap of them looked up among its links).
AMONG = {"ids": "the ids of a page of posts"}
RARE = "Post 1234"  # one post, and a few with its rarest trigram "123"


def _every_posts_case() -> list[Case]:
    """The page statement of every combination of GET /posts' filters (`?author_id=`, `?tag=`,
    `?q=` walked down to its floor, a cursor). A walk without a floor is the same statement
    reaching the list's end, fewer than the cap's rows away."""
    cases = []
    for by_author, by_tag, by_title, after in product((False, True), repeat=4):
        values: dict[str, Any] = {}
        if by_author:
            values["author_id"] = AUTHOR
        if by_tag:
            values["tag"] = "tag-1"
        if by_title:
            values |= {"title": "post 1", **FLOOR}
        if after:
            values |= POSITION
        filters = {"by_author": by_author, "by_tag": by_tag, "by_title": by_title, "after": after}
        cases.append(_posts(values, **filters, floor=by_title))
    return cases


def _every_walk_floor_case() -> list[Case]:
    """The floor of a search's walk, for every combination of the filters it walks under."""
    cases = []
    for by_author, by_tag, after in product((False, True), repeat=3):
        values: dict[str, Any] = {}
        if by_author:
            values["author_id"] = AUTHOR
        if by_tag:
            values["tag"] = "tag-1"
        if after:
            values |= POSITION
        cases.append(_walk_floor(values, by_author=by_author, by_tag=by_tag, after=after))
    return cases


CASES = [
    *_every_posts_case(),
    Case("posts_among", lambda _dialect: posts_service._POSTS_AMONG, AMONG),
    Case("posts_among_tagged", lambda _dialect: posts_service._TAGGED_AMONG, {**AMONG, "tag": "tag-1"}),
    *_every_walk_floor_case(),
    Case("posts_text_index_lookup", *_probe(search._post_probe, RARE)),
    Case("users_text_index_lookup", *_probe(search._user_probe, "User 23")),
    Case(
        "users",
        lambda _dialect: users_service._users_query(by_name=False, after=False),
        {"limit": PAGE},
        True,
    ),
    Case(
        "users_after",
        lambda _dialect: users_service._users_query(by_name=False, after=True),
        {"limit": PAGE, "after_id": USERS // 2},
    ),
    Case(
        "users_by_name",
        lambda _dialect: users_service._users_query(by_name=True, after=False, floor=True),
        {"limit": PAGE, "name": "user 1", "floor_id": USERS // 2},
    ),
    Case(
        "users_by_name_after",
        lambda _dialect: users_service._users_query(by_name=True, after=True, floor=True),
        {"limit": PAGE, "name": "user 1", "after_id": USERS // 4, "floor_id": USERS // 2},
    ),
    Case("users_among", lambda _dialect: users_service._USERS_AMONG, {"ids": [1, 2, 3]}),
    Case("users_walk_floor", lambda _dialect: users_service._walk_floor(after=False), {"offset": 10}, True),
    Case(
        "users_walk_floor_after",
        lambda _dialect: users_service._walk_floor(after=True),
        {"offset": 10, "after_id": USERS // 4},
    ),
    Case("tags", lambda _dialect: posts_service._TAG_COUNTS, {"limit": PAGE}, True),
    Case(
        "tags_tied_after",
        lambda _dialect: posts_service._TAGS_TIED_AFTER,
        {"limit": PAGE, "after_count": 5, "after_name": "tag-3"},
    ),
    Case(
        "tags_rarer_than", lambda _dialect: posts_service._TAGS_RARER_THAN, {"limit": PAGE, "after_count": 5}
    ),
    # Not a list: the statement every authenticated request runs (the caller and their session).
    Case("caller", lambda _dialect: users_service._CALLER, {"user_id": AUTHOR, "session_id": SESSION}),
    Case(
        "sessions",
        lambda _dialect: sessions_service._sessions_query(after=False),
        {"limit": PAGE, "user_id": AUTHOR, "now": START},
    ),
    Case(
        "sessions_after",
        lambda _dialect: sessions_service._sessions_query(after=True),
        {"limit": PAGE, "user_id": AUTHOR, "now": START, "before_id": SESSION},
    ),
]


@pytest.fixture
async def small_tables(database: Database) -> int:
    """Users, posts and tags, few, with the statistics the planners go by; returns the id of
    an ordinary author (a few pages among a prolific author's and everyone else's).

    An author as rare as that is the case a page must not scan for: walking the (created_at,
    id) index and filtering by author would read every newer post. (For the prolific author,
    a fifth of the posts, PostgreSQL rightly walks that index: five rows read per row shown.)"""
    async with database.engine.begin() as connection:
        await connection.execute(
            insert(User),
            [
                {"name": f"User {number}", "email": f"user{number}@example.com", "password_hash": "x"}
                for number in range(1, USERS + 1)
            ],
        )
        await connection.execute(insert(Tag), [{"name": f"tag-{number}"} for number in range(TAGS)])
        user_ids = list(await connection.scalars(select(User.id)))
        tag_ids = list(await connection.scalars(select(Tag.id)))
        await connection.execute(
            insert(Post),
            [
                {
                    "author_id": user_ids[0] if number % 5 == 0 else user_ids[number % USERS],
                    "title": f"Post {number}",
                    "created_at": START + timedelta(minutes=number),
                    "updated_at": START + timedelta(minutes=number),
                }
                for number in range(POSTS)
            ],
        )
        # MariaDB's text index is the service's to write (search.py): here, after the Core inserts.
        await search.index_names(connection, await connection.execute(select(User.id, User.name_folded)))
        await search.index_titles(connection, await connection.execute(select(Post.id, Post.title_folded)))
        posts = list(await connection.execute(select(Post.id, Post.created_at)))
        links = [
            {"post_id": post_id, "tag_id": tag_ids[(index + step) % TAGS], "created_at": created_at}
            for index, (post_id, created_at) in enumerate(posts)
            for step in range(3)
        ]
        await connection.execute(insert(post_tag), links)
        counts = Counter(link["tag_id"] for link in links)
        for tag_id, count in counts.items():
            await connection.execute(update(Tag).where(Tag.id == tag_id).values(post_count=count))
        await connection.execute(
            insert(LoginSession),
            [
                {
                    "user_id": user_id,
                    "created_at": START,
                    "last_used_at": START,
                    "expires_at": START + timedelta(days=30),
                    "address": "127.0.0.1",
                    "user_agent": "plans",
                }
                for _ in range(SESSIONS_PER_USER)
                for user_id in user_ids
            ],
        )
    async with database.engine.connect() as connection:
        tables = ", ".join(connection.dialect.identifier_preparer.quote(table) for table in TABLES)
        if connection.dialect.name == "postgresql":
            await connection.execute(text(f"ANALYZE {tables}"))
        elif connection.dialect.name == "mysql":
            await connection.execute(text(f"ANALYZE TABLE {tables}, post_title_trigram, user_name_trigram"))
        await connection.commit()
    return user_ids[1]


@pytest.fixture
async def a_session(database: Database, small_tables: int) -> int:
    """The id of one of the ordinary author's sessions, from the middle of theirs."""
    async with database.engine.connect() as connection:
        ids = list(
            await connection.scalars(select(LoginSession.id).where(LoginSession.user_id == small_tables))
        )
    return ids[len(ids) // 2]


async def plan_of(connection: AsyncConnection, statement: AnySelect, values: dict[str, Any]) -> Any:
    """The plan of `statement` as the app runs it: its SQL and parameters as sent, explained."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, sql: str, parameters: Any, *_args: Any) -> None:
        sent.append((sql, parameters))

    event.listen(connection.sync_connection, "before_cursor_execute", record)
    try:
        (await connection.execute(statement, values)).all()
    finally:
        event.remove(connection.sync_connection, "before_cursor_execute", record)
    sql, parameters = sent[-1]
    backend = connection.dialect.name
    if backend == "postgresql":
        plan = (await connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}", parameters)).scalar_one()
        return json.loads(plan) if isinstance(plan, str) else plan
    if backend == "mysql":
        return [dict(row._mapping) for row in await connection.exec_driver_sql(f"EXPLAIN {sql}", parameters)]
    return [row.detail for row in await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", parameters)]


def _postgresql_nodes(node: dict[str, Any], driving: bool) -> Iterator[tuple[dict[str, Any], bool]]:
    """Every plan node, and whether it is the first page's driving scan: reached from the
    top through outer sides of limits and nested loops only."""
    yield node, driving
    for child in node.get("Plans", []):
        outer = child.get("Parent Relationship") == "Outer"
        yield from _postgresql_nodes(
            child, driving and outer and node["Node Type"] in ("Limit", "Nested Loop")
        )


def postgresql_faults(plan: Any, first_page: bool) -> list[str]:
    root = plan[0]["Plan"]
    faults = []
    for node, driving in _postgresql_nodes(root, root["Node Type"] == "Limit"):
        kind, table = node["Node Type"], node.get("Relation Name")
        if kind in ("Sort", "Incremental Sort") and node["Plan Rows"] > PAGE:
            faults.append(f"{kind} of {node['Plan Rows']} rows by {node['Sort Key']}")
        if table not in TABLES:
            continue
        if kind == "Seq Scan":
            faults.append(f"Seq Scan on {table}")
        elif (
            kind in ("Index Scan", "Index Only Scan")
            and "Index Cond" not in node
            and not (first_page and driving and "Filter" not in node)
        ):
            faults.append(
                f"{kind} on {table} without an index condition ({node.get('Filter', 'unfiltered')})"
            )
    return faults


def mariadb_faults(plan: list[dict[str, Any]], first_page: bool) -> list[str]:
    faults = []
    for number, row in enumerate(plan):
        extra = row.get("Extra") or ""
        for sort in ("Using filesort", "Using temporary"):
            if sort in extra:
                faults.append(f"{sort} ({row['table']})")
        if row["table"] not in TABLES and not TRIGRAM_ALIASES.fullmatch(row["table"] or ""):
            continue
        if "ALL" in (row["type"] or ""):
            faults.append(f"full scan of {row['table']} ({row['type']})")
        elif row["type"] == "index" and not (first_page and number == 0 and "Using where" not in extra):
            faults.append(f"full index read of {row['table']} ({extra})")
    return faults


def sqlite_faults(plan: list[str], first_page: bool) -> list[str]:
    faults = []
    scan = re.compile(rf"^SCAN ({'|'.join(TABLES)})\b")
    for number, detail in enumerate(plan):
        if "TEMP B-TREE" in detail:
            faults.append(detail)
        elif scan.match(detail) and not (first_page and number == 0):
            # A first page may read its order's index, or a rowid table in rowid order; a
            # scan in another order needs the temporary B-tree found above.
            faults.append(detail)
    return faults


FAULTS = {"postgresql": postgresql_faults, "mysql": mariadb_faults, "sqlite": sqlite_faults}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_every_list_statement_reads_a_page_through_an_index_whatever_the_table_size(
    database: Database, small_tables: int, a_session: int, case: Case
) -> None:
    async with database.engine.connect() as connection:  # a transaction: SET LOCAL ends with it
        dialect = connection.dialect.name
        values = case.values(dialect) if callable(case.values) else case.values
        stand_ins = {AUTHOR: small_tables, SESSION: a_session}
        values = {
            key: stand_ins[value] if isinstance(value, str) and value in stand_ins else value
            for key, value in values.items()
        }
        if values.get("ids") == AMONG["ids"]:
            values["ids"] = list(
                await connection.scalars(select(Post.id).order_by(Post.id.desc()).limit(PAGE))
            )
        if dialect == "postgresql":
            await connection.execute(text("SET LOCAL enable_seqscan = off"))
        plan = await plan_of(connection, case.build(dialect), values)
    faults = FAULTS[connection.dialect.name](plan, case.first_page)
    assert not faults, (faults, plan)
    if dialect == "mysql" and case.name.endswith("_text_index_lookup"):
        # Trigrams first, then the rows by primary key, whatever the statistics (on a small
        # user table MariaDB left free would sometimes start from a full scan of user).
        order = [row["table"] for row in plan]
        assert all(TRIGRAM_ALIASES.fullmatch(table) for table in order[:-1]), order
        assert order[-1] in TABLES, order


async def test_mariadbs_join_order_and_index_hint_are_sent_every_time_and_only_to_mariadb(
    database: Database, statements: StatementCounter, backend: str
) -> None:
    first_page = posts_service._posts_query(by_author=False, by_tag=False, by_title=False, after=False)
    async with database.read_engine.connect() as connection:
        for _ in range(2):  # compiled, then from SQLAlchemy's statement cache
            await connection.execute(first_page, {"limit": PAGE})
    sent = [sql for sql in statements.statements if "FROM post" in sql]
    assert len(sent) == 2
    for sql in sent:
        hinted = "SELECT STRAIGHT_JOIN" in sql and "post FORCE INDEX (ix_post_created_at_id)" in sql
        assert hinted is (backend == "mariadb"), sql
