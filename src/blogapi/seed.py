"""Administrative data tasks for the CLI: the first admin, and fake data in bulk."""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import cast

from faker import Faker
from rich.progress import Progress
from sqlalchemy import bindparam, func, insert, select, update

from blogapi import search
from blogapi.auth.security import hash_password
from blogapi.config import Settings
from blogapi.db import Database, fold_for_search
from blogapi.posts.models import Post, Tag, post_tag
from blogapi.users import service as users_service
from blogapi.users.models import User
from blogapi.users.schemas import UserCreate

SEED_PASSWORD = "seed-password"  # noqa: S105  (fake accounts, documented in the README)
TAG_VOCABULARY = (
    "python", "sql", "async", "fastapi", "postgres", "mariadb", "sqlite", "testing", "devops",
    "security", "performance", "design", "career", "tutorial", "opinion", "release", "linux",
    "networking", "databases", "api", "web", "rust", "go", "javascript", "cloud", "data",
    "machine-learning", "open-source", "tools", "architecture",
)  # fmt: skip
BATCH = 2_000
# The links' counts, added in tag id order (the order every writer locks tags in).
_ADD_TO_COUNT = (
    update(Tag).where(Tag.id == bindparam("tag_id")).values(post_count=Tag.post_count + bindparam("links"))
)


async def create_admin(settings: Settings, *, email: str, name: str, password: str) -> int:
    """Create an admin; raises pydantic.ValidationError or errors.Conflict."""
    data = UserCreate(name=name, email=email, password=password)
    database = Database.from_settings(settings)
    try:
        async with database.sessionmaker.begin() as session:
            user = await users_service.create_user(session, data, settings, is_admin=True)
            return user.id
    finally:
        await database.dispose()


async def seed_database(settings: Settings, users: int, posts_per_user: int, random_seed: int) -> str:
    started = time.perf_counter()
    rng = random.Random(random_seed)  # noqa: S311  (repeatable fake data, not secrets)
    fake = Faker()
    fake.seed_instance(random_seed)
    password_hash = await hash_password(SEED_PASSWORD, concurrency=1)
    now = datetime.now(UTC).replace(microsecond=0)
    database = Database.from_settings(settings)
    try:
        async with database.sessionmaker.begin() as session:
            existing = set(await session.scalars(select(Tag.name)))
            missing = [{"name": name} for name in TAG_VOCABULARY if name not in existing]
            if missing:
                await session.execute(insert(Tag), missing)
            tag_ids = list(await session.scalars(select(Tag.id).where(Tag.name.in_(TAG_VOCABULARY))))
            first = (await session.scalar(select(func.coalesce(func.max(User.id), 0)))) or 0

        with Progress() as progress:
            user_task = progress.add_task("users", total=users)
            post_task = progress.add_task("posts", total=users * posts_per_user)
            for start in range(0, users, BATCH):
                count = min(BATCH, users - start)
                user_rows = []
                for offset in range(count):
                    number = first + start + offset + 1
                    joined = now - timedelta(seconds=rng.randrange(2 * 365 * 86_400))
                    user_rows.append({
                        "name": fake.name(),
                        "email": f"user{number}@example.org",
                        "password_hash": password_hash,
                        "is_admin": False,
                        "version": 1,
                        "token_version": 1,
                        "created_at": joined,
                        "updated_at": joined,
                    })  # fmt: skip
                async with database.sessionmaker.begin() as session:
                    user_ids = list(
                        await session.scalars(
                            insert(User).returning(User.id, sort_by_parameter_order=True), user_rows
                        )
                    )
                    progress.advance(user_task, count)
                    connection = await session.connection()
                    await search.index_names(
                        connection,
                        [
                            (user_id, fold_for_search(cast(str, row["name"])))
                            for user_id, row in zip(user_ids, user_rows, strict=True)
                        ],
                    )
                    post_rows = []
                    for user_id, user_row in zip(user_ids, user_rows, strict=True):
                        joined = cast(datetime, user_row["created_at"])
                        for _ in range(posts_per_user):
                            written = joined + (now - joined) * rng.random()
                            post_rows.append({
                                "author_id": user_id,
                                "title": fake.sentence(nb_words=rng.randint(3, 9)).rstrip("."),
                                "body": "\n\n".join(fake.paragraphs(nb=rng.randint(1, 4))),
                                "version": 1,
                                "created_at": written,
                                "updated_at": written,
                            })  # fmt: skip
                    post_ids = list(
                        await session.scalars(
                            insert(Post).returning(Post.id, sort_by_parameter_order=True), post_rows
                        )
                    )
                    # The search index of MariaDB is the service's to write (search.py).
                    await search.index_titles(
                        connection,
                        [
                            (post_id, fold_for_search(cast(str, row["title"])))
                            for post_id, row in zip(post_ids, post_rows, strict=True)
                        ],
                    )
                    links_of = [
                        (post_id, tag_id)
                        for post_id in post_ids
                        for tag_id in rng.sample(tag_ids, rng.randint(0, 4))
                    ]
                    written_at = {
                        post_id: row["created_at"] for post_id, row in zip(post_ids, post_rows, strict=True)
                    }
                    tag_rows = [
                        {"post_id": post_id, "tag_id": tag_id, "created_at": written_at[post_id]}
                        for post_id, tag_id in links_of
                    ]
                    if tag_rows:
                        await session.execute(insert(post_tag), tag_rows)
                        links = Counter(tag_id for _, tag_id in links_of)
                        # On the connection: a list of parameters would make the session's
                        # execute an ORM bulk UPDATE by primary key.
                        await connection.execute(
                            _ADD_TO_COUNT,
                            [{"tag_id": tag_id, "links": links[tag_id]} for tag_id in sorted(links)],
                        )
                    progress.advance(post_task, len(post_ids))
    finally:
        await database.dispose()
    elapsed = time.perf_counter() - started
    return (
        f"seeded {users} users and {users * posts_per_user} posts in {elapsed:.1f}s"
        f" (password for every seeded user: {SEED_PASSWORD})"
    )
