"""`?q=` through each backend's text index (search.py), by one rule, with a cap.

Every answer is compared with the rule computed here, in Python (`fold_for_search(q)` is a
substring of `fold_for_search(title)`), on every backend: the same queries, the same data,
so the same answers. The cap is small here (CAP), so that both ways a search runs are
exercised: a term with at most CAP matches is looked up in the text index and listed whole;
a more common one, or one without three letters or digits in a row, is walked in steps of
at most CAP posts (users), each page flagged `search_capped` when its step ended first.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from alembic import command
from conftest import Account, Accounts
from sqlalchemy import FromClause, MetaData, Table, insert, inspect, select
from sqlalchemy.ext.asyncio import create_async_engine

from blogapi import search
from blogapi.cli import alembic_config
from blogapi.config import Settings
from blogapi.db import Database, fold_for_search
from blogapi.pagination import CursorCodec, PageParams
from blogapi.posts import service as posts_service
from blogapi.posts.models import Post
from blogapi.seed import seed_database
from blogapi.users.models import User

API = "/api/v1"
CAP = 5

# Titles for the rule's corners: case in several scripts, accents, composition, LIKE's
# metacharacters and its escape, terms shorter than a trigram, and a word in most titles.
TITLES = (
    "École d'été",
    "ecole primaire",
    "Straße und STRASSE",
    "ΣΟΦΙΑ σοφία",
    "cafe\u0301 noir",
    "100% real",
    "snake_case_name",
    "C:\\path\\to",
    "a/b/c",
    "日本語の記事",
    "common one",
    "common two",
    "common three",
    "common four",
    "common five",
    "common six",
    "x",
    "Ab",
)
QUERIES = (
    "école",
    "ÉCOLE",
    "ecole",
    "é",
    "E",
    "strasse",
    "ß",
    "ss",
    "σοφια",
    "Σ",
    "CAFÉ",
    "cafe",
    "%",
    "0%",
    "_",
    "e_c",
    "\\",
    "\\p",
    "/",
    "日本語",
    "本",
    "common",
    "COMMON T",
    "six",
    "x",
    "ab",
    "zzz",
    "no such title anywhere",
    "STRASSE UND STRASSE",  # more trigrams than MariaDB intersects: the rest are checked
    "snake_case_name",
    "école d'été",
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"search_max_matches": CAP})


def expected(titles: list[str], q: str) -> list[str]:
    """The rule, here: newest first, the titles that contain q once both are folded."""
    term = fold_for_search(q)
    return [title for title in reversed(titles) if term in fold_for_search(title)]


async def search_all(
    client: httpx.AsyncClient, path: str, q: str, limit: int, **filters: Any
) -> tuple[list[str], int]:
    """Every item `q` finds (with `filters`), following the cursors; and how many pages said
    they were capped."""
    found: list[str] = []
    capped = 0
    params: dict[str, Any] = {"q": q, "limit": limit, **filters}
    for _ in range(100):
        response = await client.get(f"{API}{path}", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        found += [item["title" if path == "/posts" else "name"] for item in page["items"]]
        capped += page["search_capped"]
        if page["next_cursor"] is None:
            return found, capped
        params["cursor"] = page["next_cursor"]
    raise AssertionError("the cursors never ended")


async def publish(client: httpx.AsyncClient, author: Account, title: str) -> dict[str, Any]:
    response = await client.post(f"{API}/posts", json={"title": title}, headers=author.headers)
    assert response.status_code == 201, response.text
    post: dict[str, Any] = response.json()
    return post


@pytest.mark.parametrize("limit", [2, 100])
async def test_every_query_answers_by_the_one_rule_on_every_backend_through_any_page_size(
    client: httpx.AsyncClient, accounts: Accounts, limit: int
) -> None:
    ann = await accounts.create()
    for title in TITLES:
        await publish(client, ann, title)
    for q in QUERIES:
        found, _ = await search_all(client, "/posts", q, limit)
        assert found == expected(list(TITLES), q), q


async def test_a_rare_term_is_found_however_old_its_posts_in_one_uncapped_page(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    await publish(client, ann, "Quetzalcoatl rising")
    await publish(client, ann, "quetzalcoatl again")
    for number in range(4 * CAP):  # newer posts than the walk of one page would read
        await publish(client, ann, f"Filler {number}")
    response = await client.get(f"{API}/posts", params={"q": "QUETZAL"})
    assert response.status_code == 200, response.text
    page = response.json()
    assert [post["title"] for post in page["items"]] == ["quetzalcoatl again", "Quetzalcoatl rising"]
    assert page["next_cursor"] is None
    assert page["search_capped"] is False


async def test_a_term_with_more_matches_than_the_cap_is_walked_in_capped_steps_that_find_them_all(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    titles = [f"{'common' if number % 3 == 0 else 'other'} title {number}" for number in range(4 * CAP)]
    for title in titles:
        await publish(client, ann, title)
    response = await client.get(f"{API}/posts", params={"q": "common", "limit": 100})
    first = response.json()
    # The newest CAP posts were read, of which two match: the page says it stopped early.
    assert [post["title"] for post in first["items"]] == expected(titles, "common")[:2]
    assert first["search_capped"] is True
    assert first["next_cursor"] is not None
    found, capped = await search_all(client, "/posts", "common", 100)
    assert found == expected(titles, "common")
    assert capped == 3  # the walk of 20 posts takes 4 steps; the last one reaches the end


async def test_a_term_made_of_common_trigrams_is_looked_up_and_found_exactly(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    # Every title holds a word ending in "ter" and one starting with "ing" (so each index,
    # pg_trgm's with its word boundaries too, finds them all as candidates); one holds
    # "ter ing". More candidates than the cap, fewer matches: one uncapped page.
    ann = await accounts.create()
    titles = [f"{'winter' if number % 2 else 'later'} {number} ingots" for number in range(2 * CAP)]
    titles.insert(CAP // 2, "after ingots")
    for title in titles:
        await publish(client, ann, title)
    response = await client.get(f"{API}/posts", params={"q": "ter ing"})
    assert response.status_code == 200, response.text
    page = response.json()
    assert [post["title"] for post in page["items"]] == ["after ingots"]
    assert page["search_capped"] is False


async def test_a_term_too_short_for_the_index_is_walked_even_when_rare(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    titles = ["ox at the start", *(f"filler {number}" for number in range(2 * CAP))]
    for title in titles:
        await publish(client, ann, title)
    found, capped = await search_all(client, "/posts", "ox", 100)
    assert found == ["ox at the start"]
    assert capped >= 1


async def test_a_common_term_fills_pages_without_the_flag_when_the_walk_finds_enough(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    titles = [f"common {number}" for number in range(3 * CAP)]
    for title in titles:
        await publish(client, ann, title)
    response = await client.get(f"{API}/posts", params={"q": "common", "limit": 2})
    page = response.json()
    assert [post["title"] for post in page["items"]] == expected(titles, "common")[:2]
    assert page["search_capped"] is False
    found, capped = await search_all(client, "/posts", "common", 2)
    assert found == expected(titles, "common")
    assert capped == 0


async def test_the_filters_combine_with_search_in_both_ways_it_runs(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    bob = await accounts.create()
    for number in range(2 * CAP):
        for author in (ann, bob):
            tags = ["python"] if number % 2 else ["sql"]
            response = await client.post(
                f"{API}/posts",
                json={"title": f"{author.name} common {number}", "tags": tags},
                headers=author.headers,
            )
            assert response.status_code == 201, response.text
    await client.post(f"{API}/posts", json={"title": "rare gem", "tags": ["python"]}, headers=ann.headers)
    for q in ("common", "RARE", "gem", "1"):
        filters: list[dict[str, Any]] = [
            {"author_id": ann.id},
            {"tag": "python"},
            {"author_id": bob.id, "tag": "sql"},
        ]
        for params in filters:
            titles, _ = await search_all(client, "/posts", q, 3, **params)
            everything = (await client.get(f"{API}/posts", params={"limit": 100, **params})).json()["items"]
            assert titles == [
                post["title"] for post in everything if fold_for_search(q) in fold_for_search(post["title"])
            ], (q, params)


async def test_names_answer_by_the_one_rule_in_both_ways_a_search_runs(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    names = ["Élodie Brun", "elodie brun", "Jürgen Groß", "JURGEN GROSS", "Σοφία", "O'Neil", "Al", "x_y%z"]
    names += [f"Common Person {number}" for number in range(2 * CAP)]
    for name in names:
        await accounts.create(name)
    for q in ("ÉLODIE", "elodie", "groß", "gross", "σοφια", "'", "al", "%", "_", "common", "person 1", "zzz"):
        for limit in (2, 100):
            found, _ = await search_all(client, "/users", q, limit)
            term = fold_for_search(q)
            assert found == [name for name in names if term in fold_for_search(name)], (q, limit)


async def test_search_follows_renames_deletions_and_an_authors_deletion(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create("Annabel Lee")
    bob = await accounts.create("Bob")
    kept = await publish(client, bob, "Lighthouse keeper")
    renamed = await publish(client, ann, "Lighthouse at dawn")
    deleted = await publish(client, ann, "Lighthouse at dusk")
    headers = {**ann.headers}
    response = await client.patch(f"{API}/posts/{renamed['id']}", json={"title": "Windmill"}, headers=headers)
    assert response.status_code == 200, response.text
    response = await client.delete(f"{API}/posts/{deleted['id']}", headers=headers)
    assert response.status_code == 204, response.text
    assert (await search_all(client, "/posts", "lighthouse", 20))[0] == [kept["title"]]
    assert (await search_all(client, "/posts", "windmill", 20))[0] == ["Windmill"]

    response = await client.patch(f"{API}/users/{bob.id}", json={"name": "Robert"}, headers=bob.headers)
    assert response.status_code == 200, response.text
    assert (await search_all(client, "/users", "robert", 20))[0] == ["Robert"]
    assert (await search_all(client, "/users", "bob", 20))[0] == []

    response = await client.delete(f"{API}/users/{ann.id}", headers=ann.headers)
    assert response.status_code == 204, response.text
    assert (await search_all(client, "/users", "annabel", 20))[0] == []
    assert (await search_all(client, "/posts", "windmill", 20))[0] == []
    assert (await search_all(client, "/posts", "lighthouse", 20))[0] == [kept["title"]]


async def test_an_admin_made_by_the_service_and_renamed_by_another_admin_is_found(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    root = await accounts.create("Rootkit Admin", admin=True)
    other = await accounts.create("Ordinary")
    assert (await search_all(client, "/users", "rootkit", 20))[0] == ["Rootkit Admin"]
    response = await client.patch(
        f"{API}/users/{other.id}", json={"name": "Renamed Zebra"}, headers=root.headers
    )
    assert response.status_code == 200, response.text
    assert (await search_all(client, "/users", "zebra", 20))[0] == ["Renamed Zebra"]


async def test_seeded_posts_and_users_are_found_by_their_words(
    client: httpx.AsyncClient, settings: Settings, database: Database
) -> None:
    await seed_database(settings, users=3, posts_per_user=4, random_seed=7)
    async with database.engine.connect() as connection:
        titles = list(
            await connection.scalars(select(Post.title).order_by(Post.created_at.desc(), Post.id.desc()))
        )
        names = list(await connection.scalars(select(User.name).order_by(User.id)))
    for title in titles[:3]:
        word = max(title.split(), key=len)
        found, _ = await search_all(client, "/posts", word, 100)
        assert found == expected(titles[::-1], word), word
    for name in names:
        word = max(name.split(), key=len)
        found, _ = await search_all(client, "/users", word.upper(), 100)
        assert found == [other for other in names if fold_for_search(word) in fold_for_search(other)], word


# Columns added after b7e4d2a91c3f (the revision before the search structures), by table.
def _as_in(table: FromClause, columns: set[str]) -> Table:
    """A copy of `table` with only the columns the database has (their defaults included)."""
    assert isinstance(table, Table)
    return Table(
        table.name, MetaData(), *(column._copy() for column in table.columns if column.name in columns)
    )


async def test_upgrading_indexes_the_existing_rows_and_downgrading_removes_the_search_structures(
    scratch_database_url: str, settings: Settings
) -> None:
    config = alembic_config(scratch_database_url)
    await asyncio.to_thread(command.upgrade, config, "b7e4d2a91c3f")
    engine = create_async_engine(scratch_database_url)
    try:
        async with engine.begin() as connection:
            # The tables as they were at that revision: the models have columns later
            # migrations added (user.is_active, user.email_verified), which an INSERT from
            # them would name.
            def columns(sync_connection: Any) -> dict[str, set[str]]:
                inspector = inspect(sync_connection)
                return {name: {c["name"] for c in inspector.get_columns(name)} for name in ("user", "post")}

            existing = await connection.run_sync(columns)
            user_id = (
                await connection.execute(
                    insert(_as_in(User.__table__, existing["user"])).returning(User.id),
                    {"name": "Old Timer", "email": "old@example.com", "password_hash": "x"},
                )
            ).scalar_one()
            await connection.execute(
                insert(_as_in(Post.__table__, existing["post"])),
                [{"author_id": user_id, "title": f"Archive entry {number}"} for number in range(12)],
            )
        await asyncio.to_thread(command.upgrade, config, "head")
        database = Database.from_engine(engine)
        params = PageParams(100, None, CursorCodec(b"secret"))
        async with database.read_engine.connect() as connection:
            page = await posts_service.list_posts(
                connection, params, title_contains="ENTRY 1", max_matches=CAP
            )
            # Found by the index (at most CAP matches), from rows written before it existed.
            assert [post.title for post in page.items] == [
                f"Archive entry {number}" for number in (11, 10, 1)
            ]
            assert page.search_capped is False
            found = await search.user_matches(connection, fold_for_search("timer"), CAP)
            assert found == [user_id]

        await asyncio.to_thread(command.downgrade, config, "b7e4d2a91c3f")

        def leftovers(sync_connection: Any) -> set[str]:
            inspector = inspect(sync_connection)
            names = set(inspector.get_table_names())
            for table in ("post", "user"):
                names |= {index["name"] or "" for index in inspector.get_indexes(table)}
            return {name for name in names if search.is_search_object(name)}

        async with engine.connect() as connection:
            assert await connection.run_sync(leftovers) == set()
    finally:
        await engine.dispose()
