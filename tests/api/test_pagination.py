"""Keyset pagination: limits, the page envelope, stable walks, cursor integrity and the statement budget."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from conftest import TEST_SECRET, Account, Accounts, StatementCounter, assert_problem

from blogapi.db import Database
from blogapi.pagination import CursorCodec
from blogapi.posts.models import Post

API = "/api/v1"
PROBLEM = "application/problem+json"
LISTS = ("/posts", "/tags", "/users", "/users/{user_id}/posts")
STATEMENT_BUDGET = 3


async def create_post(client: httpx.AsyncClient, account: Account, **fields: Any) -> int:
    payload: dict[str, Any] = {"title": "A title", **fields}
    response = await client.post(f"{API}/posts", json=payload, headers=account.headers)
    assert response.status_code == 201, response.text
    post_id: int = response.json()["id"]
    return post_id


async def get_page(client: httpx.AsyncClient, path: str = "/posts", **params: Any) -> dict[str, Any]:
    response = await client.get(f"{API}{path}", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def ids(page: dict[str, Any]) -> list[int]:
    return [item["id"] for item in page["items"]]


def forged_cursor(kind: str, position: list[Any]) -> str:
    """A cursor signed with the test secret: what an older release, say, could have issued."""
    return CursorCodec(TEST_SECRET.encode()).encode(kind, position)


# Limits and the envelope


@pytest.mark.parametrize("limit", ["0", "101", "-1", str(10**9), str(10**30), "abc", "1.5", ""])
@pytest.mark.parametrize("path", LISTS)
async def test_an_out_of_range_limit_is_422_on_every_list(
    client: httpx.AsyncClient, accounts: Accounts, path: str, limit: str
) -> None:
    ann = await accounts.create()
    response = await client.get(f"{API}{path.format(user_id=ann.id)}", params={"limit": limit})
    assert_problem(response, 422)


@pytest.mark.parametrize("limit", [1, 100])
@pytest.mark.parametrize("path", LISTS)
async def test_the_limit_bounds_are_accepted_on_every_list(
    client: httpx.AsyncClient, accounts: Accounts, path: str, limit: int
) -> None:
    ann = await accounts.create()
    await create_post(client, ann, tags=["t"])
    page = await get_page(client, path.format(user_id=ann.id), limit=limit)
    searchable = path in ("/posts", "/users")  # the lists `q` filters say whether it was capped
    assert set(page) == {"items", "next_cursor"} | ({"search_capped"} if searchable else set())
    assert page.get("search_capped", False) is False
    assert len(page["items"]) == 1
    assert page["next_cursor"] is None


async def test_the_default_limit_is_20(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    for i in range(21):
        await create_post(client, ann, title=f"post {i}")
    first = await get_page(client)
    assert len(first["items"]) == 20
    assert isinstance(first["next_cursor"], str)
    second = await get_page(client, cursor=first["next_cursor"])
    assert len(second["items"]) == 1
    assert second["next_cursor"] is None


async def test_an_empty_list_is_an_empty_page_without_a_cursor(client: httpx.AsyncClient) -> None:
    assert await get_page(client) == {"items": [], "next_cursor": None, "search_capped": False}


async def test_the_last_page_has_no_next_cursor_even_when_it_is_full(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    for _ in range(20):
        await create_post(client, ann)
    first = await get_page(client, limit=10)
    assert first["next_cursor"] is not None
    second = await get_page(client, limit=10, cursor=first["next_cursor"])
    assert len(second["items"]) == 10
    assert second["next_cursor"] is None


async def test_posts_are_listed_newest_first(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    created = [await create_post(client, ann, title=f"post {i}") for i in range(5)]
    page = await get_page(client)
    assert ids(page) == created[::-1]
    stamps = [datetime.fromisoformat(item["created_at"].replace("Z", "+00:00")) for item in page["items"]]
    assert stamps == sorted(stamps, reverse=True)


async def test_posts_created_at_the_same_instant_are_ordered_and_paged_by_id(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    instant = datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    async with database.sessionmaker.begin() as session:
        posts = [
            Post(author_id=ann.id, title=f"tie {i}", body="", created_at=instant, updated_at=instant)
            for i in range(5)
        ]
        session.add_all(posts)
    expected = sorted((post.id for post in posts), reverse=True)
    walked: list[int] = []
    cursor: str | None = None
    for _ in range(3):
        page = await get_page(client, limit=2, **({} if cursor is None else {"cursor": cursor}))
        walked += ids(page)
        cursor = page["next_cursor"]
    assert walked == expected
    assert cursor is None


# Stable walks


async def walk(
    client: httpx.AsyncClient, limit: int, between_pages: Any, path: str = "/posts"
) -> tuple[list[int], int]:
    """Every id from the first page to the last, calling `between_pages(page_number)` in between."""
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await get_page(client, path, limit=limit, **({} if cursor is None else {"cursor": cursor}))
        seen += ids(page)
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return seen, pages
        assert pages < 50, "the walk does not end"
        await between_pages(pages)


async def test_posts_created_during_a_walk_neither_shift_nor_join_it(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    originals = [await create_post(client, ann, title=f"original {i}") for i in range(25)]
    added: list[int] = []

    async def insert_posts(_page: int) -> None:
        for i in range(3):
            added.append(await create_post(client, ann, title=f"new {i}"))

    seen, pages = await walk(client, 10, insert_posts)
    assert seen == originals[::-1]
    assert pages == 3
    assert len(added) == 6


async def test_posts_updated_during_a_walk_are_neither_skipped_nor_repeated(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    originals = [await create_post(client, ann, title=f"original {i}", tags=["a"]) for i in range(25)]

    async def update_posts(page: int) -> None:
        # One post already listed, one on the coming page, one on the last.
        for post_id in (originals[-page * 10 + 1], originals[-page * 10 - 1], originals[0]):
            response = await client.patch(
                f"{API}/posts/{post_id}",
                json={"title": f"edited after page {page}", "tags": ["b"]},
                headers=ann.headers,
            )
            assert response.status_code == 200, response.text

    seen, _ = await walk(client, 10, update_posts)
    assert seen == originals[::-1]


async def test_a_post_deleted_during_a_walk_does_not_shift_the_others(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    originals = [await create_post(client, ann, title=f"original {i}") for i in range(25)]
    listed_first = originals[::-1][:10]
    deleted = originals[::-1][10]

    async def delete_next(page: int) -> None:
        if page == 1:
            for post_id in (listed_first[-1], deleted):
                response = await client.delete(f"{API}/posts/{post_id}", headers=ann.headers)
                assert response.status_code == 204

    seen, _ = await walk(client, 10, delete_next)
    assert seen == [post_id for post_id in originals[::-1] if post_id != deleted]


async def test_a_filtered_walk_neither_skips_nor_repeats(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    bob = await accounts.create()
    mine: list[int] = []
    for i in range(25):
        mine.append(await create_post(client, ann, title=f"ann {i}", tags=["x"]))
        await create_post(client, bob, title=f"bob {i}", tags=["x"])

    async def nothing(_page: int) -> None:
        return None

    seen, pages = await walk(client, 10, nothing, path=f"/users/{ann.id}/posts")
    assert seen == mine[::-1]
    assert pages == 3


# Cursor integrity


async def first_cursor(client: httpx.AsyncClient, accounts: Accounts) -> str:
    ann = await accounts.create()
    for _ in range(3):
        await create_post(client, ann)
    cursor = (await get_page(client, limit=1))["next_cursor"]
    assert isinstance(cursor, str)
    return cursor


def replace_char(text: str, index: int) -> str:
    return text[:index] + ("B" if text[index] == "A" else "A") + text[index + 1 :]


async def test_a_valid_cursor_is_accepted(client: httpx.AsyncClient, accounts: Accounts) -> None:
    cursor = await first_cursor(client, accounts)
    assert len((await get_page(client, limit=1, cursor=cursor))["items"]) == 1


@pytest.mark.parametrize("part", ["payload", "signature"])
async def test_a_cursor_with_a_flipped_character_is_422(
    client: httpx.AsyncClient, accounts: Accounts, part: str
) -> None:
    cursor = await first_cursor(client, accounts)
    index = 0 if part == "payload" else cursor.index(".") + 1
    tampered = replace_char(cursor, index)
    assert tampered != cursor
    assert_problem(await client.get(f"{API}/posts", params={"cursor": tampered}), 422)


@pytest.mark.parametrize(
    "cursor",
    [
        "abc",
        "a.b.c",
        ".",
        "!!!.???",
        "é.é",
        base64.urlsafe_b64encode(b"garbage bytes \xff\xfe").decode(),
        base64.urlsafe_b64encode(b'["posts","2020-01-01T00:00:00+00:00",1]').decode() + ".AAAA",
        "x" * 513,
    ],
    ids=["abc", "three-parts", "dot", "bad-alphabet", "non-ascii", "b64-garbage", "unsigned", "too-long"],
)
async def test_a_garbage_cursor_is_422(client: httpx.AsyncClient, cursor: str) -> None:
    assert_problem(await client.get(f"{API}/posts", params={"cursor": cursor}), 422)


async def test_a_users_cursor_is_refused_by_the_posts_list(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await accounts.create()
    await accounts.create()
    users_cursor = (await get_page(client, "/users", limit=1))["next_cursor"]
    assert isinstance(users_cursor, str)
    assert_problem(await client.get(f"{API}/posts", params={"cursor": users_cursor}), 422)


async def test_a_posts_cursor_is_refused_by_the_tags_list(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    cursor = await first_cursor(client, accounts)
    assert_problem(await client.get(f"{API}/tags", params={"cursor": cursor}), 422)


async def test_a_cursor_signed_with_another_secret_is_422(client: httpx.AsyncClient) -> None:
    cursor = CursorCodec(b"another secret entirely, also long enough").encode(
        "posts", ["2020-01-01T00:00:00+00:00", 1]
    )
    assert_problem(await client.get(f"{API}/posts", params={"cursor": cursor}), 422)


@pytest.mark.parametrize(
    "position",
    [
        ["not a timestamp", 1],
        ["2020-01-01T00:00:00+00:00"],
        [],
        [1, 2],
        ["2020-01-01T00:00:00+00:00", "x"],
    ],
    ids=["bad-timestamp", "short", "empty", "number-timestamp", "bad-id"],
)
async def test_a_signed_cursor_with_an_unexpected_position_is_422_not_500(
    client: httpx.AsyncClient, position: list[Any]
) -> None:
    assert_problem(await client.get(f"{API}/posts", params={"cursor": forged_cursor("posts", position)}), 422)


@pytest.mark.parametrize("position", [["many", "a-tag"], [1], []], ids=["bad-count", "short", "empty"])
async def test_a_signed_tags_cursor_with_an_unexpected_position_is_422_not_500(
    client: httpx.AsyncClient, position: list[Any]
) -> None:
    assert_problem(await client.get(f"{API}/tags", params={"cursor": forged_cursor("tags", position)}), 422)


async def test_a_signed_cursor_that_is_not_json_is_422_not_500(client: httpx.AsyncClient) -> None:
    codec = CursorCodec(TEST_SECRET.encode())
    payload = b"not json"
    signature = codec._sign(payload)
    encoded = [base64.urlsafe_b64encode(part).decode().rstrip("=") for part in (payload, signature)]
    cursor = ".".join(encoded)
    assert_problem(await client.get(f"{API}/posts", params={"cursor": cursor}), 422)


# Statement budget


async def seed_tagged_posts(client: httpx.AsyncClient, author: Account, other: Account, count: int) -> None:
    """`count` posts by `author` and a few by `other`, each with three tags."""
    for i in range(count):
        tags = [f"tag-{i % 7}", f"tag-{(i + 1) % 7}", f"tag-{(i + 2) % 7}"]
        await create_post(client, author, title=f"post {i}", tags=tags)
        if i % 25 == 0:
            await create_post(client, other, title=f"other {i}", tags=tags)


async def count_statements(
    client: httpx.AsyncClient, statements: StatementCounter, path: str, expected_items: int, **params: Any
) -> int:
    statements.reset()
    response = await client.get(f"{API}{path}", params=params)
    count = statements.count
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) == expected_items
    assert all(len(item["tags"]) == 3 and item["author"]["name"] for item in items)
    return count


async def test_listing_posts_takes_the_same_few_statements_whatever_the_page_size(
    client: httpx.AsyncClient, accounts: Accounts, statements: StatementCounter
) -> None:
    ann = await accounts.create()
    bob = await accounts.create()
    await seed_tagged_posts(client, ann, bob, 101)
    counts = {n: await count_statements(client, statements, "/posts", n, limit=n) for n in (5, 50, 100)}
    assert len(set(counts.values())) == 1, (counts, statements.statements)
    assert counts[100] <= STATEMENT_BUDGET, statements.statements


async def test_listing_a_users_posts_takes_the_same_few_statements_whatever_the_page_size(
    client: httpx.AsyncClient, accounts: Accounts, statements: StatementCounter
) -> None:
    ann = await accounts.create()
    bob = await accounts.create()
    await seed_tagged_posts(client, ann, bob, 101)
    path = f"/users/{ann.id}/posts"
    counts = {n: await count_statements(client, statements, path, n, limit=n) for n in (5, 50, 100)}
    assert len(set(counts.values())) == 1, (counts, statements.statements)
    assert counts[100] <= STATEMENT_BUDGET, statements.statements


async def test_reading_a_post_takes_the_same_few_statements_whatever_its_tag_count(
    client: httpx.AsyncClient, accounts: Accounts, statements: StatementCounter
) -> None:
    ann = await accounts.create()
    counts: dict[int, int] = {}
    for tag_count in (0, 1, 20):
        tags = [f"tag-{i:02d}" for i in range(tag_count)]
        post_id = await create_post(client, ann, tags=tags)
        statements.reset()
        response = await client.get(f"{API}/posts/{post_id}")
        counts[tag_count] = statements.count
        assert response.status_code == 200, response.text
        assert response.json()["tags"] == tags
    assert len(set(counts.values())) == 1, (counts, statements.statements)
    assert counts[20] <= STATEMENT_BUDGET, statements.statements
