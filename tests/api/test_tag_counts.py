"""Tag post counts stay exact under concurrent tagging, retagging and deletes, on every backend.

The requests really run at once (asyncio.gather through the API, each with its own pooled
connection and commit), then every tag's post_count is compared with a fresh count of its links.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
from conftest import Account, Accounts
from sqlalchemy import event, func, select

from blogapi.db import Database
from blogapi.posts.models import Post, Tag, post_tag

API = "/api/v1"
VOCABULARY = [f"t{number}" for number in range(8)]


async def counts_and_links(database: Database) -> tuple[dict[str, int], dict[str, int]]:
    """Every tag's stored post_count, and the links each tag has, counted afresh."""
    async with database.engine.connect() as connection:
        stored = {name: count for name, count in await connection.execute(select(Tag.name, Tag.post_count))}
        linked = dict.fromkeys(stored, 0)
        query = select(Tag.name, func.count()).join(post_tag, post_tag.c.tag_id == Tag.id).group_by(Tag.name)
        linked |= {name: count for name, count in await connection.execute(query)}
    return stored, linked


async def links_with_another_date_than_their_post(database: Database) -> int:
    async with database.engine.connect() as connection:
        query = (
            select(func.count())
            .select_from(post_tag)
            .join(Post, Post.id == post_tag.c.post_id)
            .where(post_tag.c.created_at != Post.created_at)
        )
        return int(await connection.scalar(query) or 0)


async def listed_tags(client: httpx.AsyncClient) -> dict[str, int]:
    listed: dict[str, int] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        response = await client.get(f"{API}/tags", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        listed |= {item["name"]: item["post_count"] for item in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return listed


async def create_post(client: httpx.AsyncClient, account: Account, tags: list[str]) -> int:
    response = await client.post(f"{API}/posts", json={"title": "t", "tags": tags}, headers=account.headers)
    assert response.status_code == 201, response.text
    post_id: int = response.json()["id"]
    return post_id


def some_tags(rng: random.Random) -> list[str]:
    return rng.sample(VOCABULARY, rng.randint(0, 5))


async def test_counts_stay_exact_after_concurrent_tagging_retagging_and_deletes(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    rng = random.Random(16)
    ann, bob, cat = [await accounts.create() for _ in range(3)]
    admin = await accounts.create(admin=True)
    deadlocks: list[str] = []

    def record_deadlock(context: Any) -> None:
        error = context.original_exception
        if "deadlock" in str(error).lower() or "1213" in str(error):
            deadlocks.append(str(error))

    event.listen(database.engine.sync_engine, "handle_error", record_deadlock)
    try:
        # Tagging: posts created at once, most tags shared by several of them.
        authors = [ann, bob, cat] * 8
        post_ids = await asyncio.gather(*(create_post(client, author, some_tags(rng)) for author in authors))
        owner = dict(zip(post_ids, authors, strict=True))
        stored, linked = await counts_and_links(database)
        assert stored == linked

        # Retagging, deleting posts, deleting an author (cat, whose posts are being retagged
        # meanwhile) and more tagging, all at once.
        requests: list[Any] = []
        doomed = set(rng.sample([post for post in post_ids if owner[post] is not cat], 6))
        for post_id in post_ids:
            # An admin retags cat's posts: cat's own token dies with cat.
            account = admin if owner[post_id] is cat else owner[post_id]
            if post_id in doomed:
                requests.append(client.delete(f"{API}/posts/{post_id}", headers=account.headers))
            else:
                patch = {"tags": some_tags(rng)}
                requests.append(client.patch(f"{API}/posts/{post_id}", json=patch, headers=account.headers))
        requests.append(client.delete(f"{API}/users/{cat.id}", headers=admin.headers))
        requests += [
            client.post(f"{API}/posts", json={"title": "t", "tags": some_tags(rng)}, headers=author.headers)
            for author in (ann, bob) * 4
        ]
        rng.shuffle(requests)
        responses = await asyncio.gather(*requests)
    finally:
        event.remove(database.engine.sync_engine, "handle_error", record_deadlock)

    for response in responses:
        request = response.request
        cats_post = (
            request.url.path.startswith(f"{API}/posts/")
            and owner.get(int(request.url.path.rsplit("/", 1)[1])) is cat
        )
        # A retag of cat's post loses the race to cat's deletion with a 404, or wins it.
        expected = {200, 404} if cats_post else {200, 201, 204}
        assert response.status_code in expected, (request.method, request.url, response.text)

    stored, linked = await counts_and_links(database)
    assert stored == linked
    assert sum(linked.values()) > 0
    assert await listed_tags(client) == {name: count for name, count in linked.items() if count > 0}
    assert await links_with_another_date_than_their_post(database) == 0
    # The writers lock tags in one order: they queued, none deadlocked and was retried.
    assert deadlocks == []
