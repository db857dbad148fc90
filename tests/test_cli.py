"""The `blogapi` command, run as a user runs it: a subprocess against a real database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from conftest import upgrade
from pwdlib import PasswordHash
from sqlalchemy import FromClause, func, select
from sqlalchemy.ext.asyncio import create_async_engine

from blogapi.posts.models import Post, Tag, post_tag
from blogapi.users.models import User

BLOGAPI = str(Path(sys.executable).parent / "blogapi")


async def blogapi(
    database_url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = os.environ | {"DATABASE_URL": database_url} | (env or {})
    return await asyncio.to_thread(
        subprocess.run,
        [BLOGAPI, *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


async def count(url: str, *tables: FromClause) -> list[int]:
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        counts = [
            int(await connection.scalar(select(func.count()).select_from(table)) or 0) for table in tables
        ]
    await engine.dispose()
    return counts


async def migrate(url: str) -> None:
    await asyncio.to_thread(upgrade, url)


async def test_db_upgrade_then_check_reports_no_drift_and_current_shows_head(
    scratch_database_url: str,
) -> None:
    assert (await blogapi(scratch_database_url, "db", "upgrade")).returncode == 0
    result = await blogapi(scratch_database_url, "db", "check")
    assert result.returncode == 0, result.stderr
    assert "no drift" in result.stdout
    assert "(head)" in (await blogapi(scratch_database_url, "db", "current")).stdout


async def test_db_check_on_an_unmigrated_database_fails(scratch_database_url: str) -> None:
    result = await blogapi(scratch_database_url, "db", "check")
    assert result.returncode == 1


async def test_seed_inserts_the_requested_users_posts_and_tags(scratch_database_url: str) -> None:
    await migrate(scratch_database_url)
    result = await blogapi(
        scratch_database_url, "seed", "--users", "30", "--posts-per-user", "4", "--seed", "7"
    )
    assert result.returncode == 0, result.stderr
    assert "seeded 30 users and 120 posts" in result.stdout
    users, posts, tags, links = await count(
        scratch_database_url, User.__table__, Post.__table__, Tag.__table__, post_tag
    )
    assert (users, posts) == (30, 120)
    assert tags > 0
    assert links > 0


async def test_seeding_counts_each_tags_links_and_dates_each_link_as_its_post(
    scratch_database_url: str,
) -> None:
    await migrate(scratch_database_url)
    for _ in range(2):  # the second run adds to the counts of the first
        result = await blogapi(scratch_database_url, "seed", "--users", "10", "--posts-per-user", "3")
        assert result.returncode == 0, result.stderr
    engine = create_async_engine(scratch_database_url)
    async with engine.connect() as connection:
        links = select(func.count()).where(post_tag.c.tag_id == Tag.id).scalar_subquery()
        miscounted = await connection.scalar(
            select(func.count()).select_from(Tag).where(Tag.post_count != links)
        )
        total = await connection.scalar(select(func.sum(Tag.post_count)))
        misdated = await connection.scalar(
            select(func.count())
            .select_from(post_tag)
            .join(Post, Post.id == post_tag.c.post_id)
            .where(post_tag.c.created_at != Post.created_at)
        )
    await engine.dispose()
    assert (miscounted, misdated) == (0, 0)
    assert total == (await count(scratch_database_url, post_tag))[0] > 0


async def test_seeding_twice_adds_more_users_instead_of_colliding(scratch_database_url: str) -> None:
    await migrate(scratch_database_url)
    for _ in range(2):
        result = await blogapi(scratch_database_url, "seed", "--users", "5", "--posts-per-user", "1")
        assert result.returncode == 0, result.stderr
    assert await count(scratch_database_url, User.__table__) == [10]


async def test_create_admin_takes_the_password_from_the_environment(scratch_database_url: str) -> None:
    await migrate(scratch_database_url)
    result = await blogapi(
        scratch_database_url,
        "create-admin",
        "--email",
        "Root@Example.com",
        "--name",
        "Root",
        env={"BLOGAPI_ADMIN_PASSWORD": "an admin password"},
    )
    assert result.returncode == 0, result.stderr
    assert "an admin password" not in result.stdout + result.stderr
    engine = create_async_engine(scratch_database_url)
    async with engine.connect() as connection:
        row = (await connection.execute(select(User.email, User.is_admin, User.password_hash))).one()
    await engine.dispose()
    assert row.email == "root@example.com"
    assert row.is_admin is True or row.is_admin == 1
    assert PasswordHash.recommended().verify("an admin password", row.password_hash)


async def test_create_admin_with_a_taken_email_fails_with_a_message(scratch_database_url: str) -> None:
    await migrate(scratch_database_url)
    env = {"BLOGAPI_ADMIN_PASSWORD": "an admin password"}
    await blogapi(scratch_database_url, "create-admin", "--email", "a@example.com", "--name", "A", env=env)
    result = await blogapi(
        scratch_database_url, "create-admin", "--email", "A@example.com", "--name", "A", env=env
    )
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert "Traceback" not in result.stderr


async def test_create_admin_with_an_invalid_email_or_short_password_fails_with_a_message(
    scratch_database_url: str,
) -> None:
    await migrate(scratch_database_url)
    result = await blogapi(
        scratch_database_url, "create-admin", "--email", "not-an-email", "--name", "A",
        env={"BLOGAPI_ADMIN_PASSWORD": "short"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "email" in result.stderr
    assert "password" in result.stderr
    assert "short" not in result.stderr.replace("too short", "").replace("at least", "")
    assert "Traceback" not in result.stderr
