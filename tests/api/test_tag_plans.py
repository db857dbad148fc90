"""The tag lists read index ranges, not tables: EXPLAIN of the statements the API sends.

`?tag=` (a common, a rare and an unknown tag, first page and after a cursor) and `/tags`
(first page, after a cursor) must not scan post, post_tag, tag or user in full, nor one of
their indexes from end to end (the old `?tag=` walked the post index testing each post's
tags), nor sort more than a page. PostgreSQL plans with `enable_seqscan = off`, so that a
missing index shows as a Seq Scan whatever the table size; MariaDB and SQLite plan on
analysed tables.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, insert, text
from sqlalchemy.engine import Connection

from blogapi.db import Database
from blogapi.posts.models import Post, Tag, post_tag
from blogapi.users.models import User

API = "/api/v1"
POSTS = 3000
AUTHORS = 100
TABLES = {"post", "post_tag", "tag", "user"}
PAGE = 20


async def seed(database: Database) -> None:
    """POSTS posts: every one tagged `common`, two `rare`, and 1000 tags used once each."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with database.engine.begin() as connection:
        now = datetime.now(UTC)
        users = [
            {"name": f"u{n}", "name_folded": f"u{n}", "email": f"u{n}@example.com", "password_hash": "x",
             "is_admin": False, "created_at": now, "updated_at": now}
            for n in range(AUTHORS)
        ]  # fmt: skip
        author_ids = list((await connection.execute(insert(User).returning(User.id), users)).scalars())
        posts = [
            {"author_id": author_ids[n % AUTHORS], "title": f"post {n}", "title_folded": f"post {n}",
             "body": "", "created_at": start + timedelta(minutes=n // 2), "updated_at": now}
            for n in range(POSTS)
        ]  # fmt: skip
        post_ids = list(
            (
                await connection.execute(insert(Post).returning(Post.id, sort_by_parameter_order=True), posts)
            ).scalars()
        )
        names = ["common", "rare"] + [f"once-{n:04d}" for n in range(1000)]
        tag_ids = dict(
            zip(
                names,
                (
                    await connection.execute(
                        insert(Tag).returning(Tag.id, sort_by_parameter_order=True),
                        [{"name": n} for n in names],
                    )
                ).scalars(),
                strict=True,
            )
        )
        links = [(post_id, "common") for post_id in post_ids]
        links += [(post_ids[10], "rare"), (post_ids[2000], "rare")]
        links += [(post_ids[n], f"once-{n:04d}") for n in range(1000)]
        dates = {post_id: post["created_at"] for post_id, post in zip(post_ids, posts, strict=True)}
        await connection.execute(
            insert(post_tag),
            [{"post_id": p, "tag_id": tag_ids[name], "created_at": dates[p]} for p, name in links],
        )
        counts: dict[str, int] = {}
        for _, name in links:
            counts[name] = counts.get(name, 0) + 1
        await connection.execute(
            text("UPDATE tag SET post_count = :count WHERE name = :name"),
            [{"count": count, "name": name} for name, count in counts.items()],
        )
    async with database.engine.connect() as connection:
        dialect = connection.dialect.name
        tables = "" if dialect in ("postgresql", "sqlite") else " TABLE post, post_tag, tag, user"
        await connection.execute(text(f"ANALYZE{tables}"))
        await connection.commit()


async def sent_statements(
    client: httpx.AsyncClient, database: Database, path: str, **params: Any
) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """The response to GET `path` and the SELECTs it sent, with their parameters."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Connection, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, parameters))

    event.listen(database.engine.sync_engine, "before_cursor_execute", record)
    try:
        response = await client.get(f"{API}{path}", params=params)
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", record)
    assert response.status_code == 200, response.text
    assert sent
    page: dict[str, Any] = response.json()
    return page, sent


def postgresql_problems(plan: dict[str, Any]) -> list[str]:
    problems = []
    node_type = plan["Node Type"]
    if node_type == "Seq Scan" and plan.get("Relation Name") in TABLES:
        problems.append(f"Seq Scan on {plan['Relation Name']}")
    if (
        node_type in ("Index Scan", "Index Only Scan")
        and plan["Relation Name"] in TABLES
        and "Index Cond" not in plan
    ):
        problems.append(f"{node_type} of all of {plan['Index Name']}")
    # Any sort: its row estimate cannot be trusted to bound it (the old `?tag=` plan here
    # estimated 4 rows for a tag on all 3000 posts). An index range in page order needs none.
    if node_type in ("Sort", "Incremental Sort"):
        problems.append(f"{node_type} (of {plan['Plan Rows']} rows, estimated)")
    if (
        node_type == "Bitmap Heap Scan"
        and plan.get("Relation Name") in TABLES
        and plan["Plan Rows"] > PAGE + 1
    ):
        problems.append(f"Bitmap Heap Scan of {plan['Plan Rows']} rows of {plan['Relation Name']}")
    for child in plan.get("Plans", []):
        problems += postgresql_problems(child)
    return problems


async def explain(database: Database, statement: str, parameters: Any) -> tuple[list[str], str]:
    """What is wrong with the statement's plan (nothing: []), and the plan, for the message."""
    async with database.engine.connect() as connection:
        dialect = connection.dialect.name
        if dialect == "postgresql":
            await connection.exec_driver_sql("SET enable_seqscan = off")
            result = await connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
            document = result.scalar_one()
            plan = (json.loads(document) if isinstance(document, str) else document)[0]["Plan"]
            await connection.rollback()
            return postgresql_problems(plan), json.dumps(plan, indent=1)
        if dialect == "sqlite":
            rows = (await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)).all()
            details = [row[-1] for row in rows]
            problems = [
                detail
                for detail in details
                if any(detail.startswith(f"SCAN {table}") for table in TABLES) or "TEMP B-TREE" in detail
            ]
            return problems, "\n".join(details)
        explained = (await connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)).mappings().all()
        problems = []
        for row in explained:
            table, access, extra = row["table"], row["type"], row["Extra"] or ""
            if table in TABLES and access == "ALL":
                problems.append(f"full scan of {table}")
            if table in TABLES and access == "index":
                problems.append(f"full index scan of {table}")
            if "filesort" in extra or "temporary" in extra:
                problems.append(f"{table}: {extra}")
        return problems, "\n".join(str(dict(row)) for row in explained)


async def assert_indexed(
    client: httpx.AsyncClient, database: Database, path: str, *, seek: str | None = None, **params: Any
) -> dict[str, Any]:
    """GET `path`; every statement it sent is planned without a scan or a sort, and (`seek`)
    reads its index from a bound on this column, not from the start of the range."""
    page, sent = await sent_statements(client, database, path, **params)
    for statement, parameters in sent:
        problems, plan = await explain(database, statement, parameters)
        assert problems == [], f"{statement}\n{plan}"
        if seek is not None:
            assert seeks_on(database, plan, seek), f"no seek on {seek}:\n{statement}\n{plan}"
    return page


def seeks_on(database: Database, plan: str, column: str) -> bool:
    """Whether the plan bounds `column` in an index condition (MariaDB: a range access)."""
    # `created_at < x`, or the row comparison `(created_at, post_id) < (x, y)` that leads with it.
    if database.engine.dialect.name == "postgresql":
        conditions = [line for line in plan.splitlines() if '"Index Cond"' in line]
        return any(f"{column} <" in line or f"ROW({column}," in line for line in conditions)
    if database.engine.dialect.name == "sqlite":
        return f"{column}<" in plan or (f"({column}," in plan and ")<(" in plan)
    return "'type': 'range'" in plan


@pytest.fixture
async def seeded(database: Database) -> Database:
    await seed(database)
    return database


@pytest.mark.parametrize("tag", ["common", "rare", "unknown"])
async def test_posts_by_tag_read_the_tags_links_by_index(
    client: httpx.AsyncClient, seeded: Database, tag: str
) -> None:
    first = await assert_indexed(client, seeded, "/posts", tag=tag, limit=PAGE)
    expected = {"common": PAGE, "rare": 2, "unknown": 0}[tag]
    assert len(first["items"]) == expected
    assert all(tag in post["tags"] for post in first["items"])
    if first["next_cursor"]:
        second = await assert_indexed(
            client, seeded, "/posts", seek="created_at", tag=tag, limit=PAGE, cursor=first["next_cursor"]
        )
        assert len(second["items"]) == PAGE


async def test_tags_by_count_read_the_count_index(client: httpx.AsyncClient, seeded: Database) -> None:
    first = await assert_indexed(client, seeded, "/tags", limit=PAGE)
    assert [item["name"] for item in first["items"][:3]] == ["common", "rare", "once-0000"]
    # After a cursor inside the tags used once: the rest of them, then (none) rarer ones.
    cursor = first["next_cursor"]
    for _ in range(3):
        page = await assert_indexed(client, seeded, "/tags", limit=PAGE, cursor=cursor)
        assert len(page["items"]) == PAGE
        cursor = page["next_cursor"]
