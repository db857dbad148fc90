"""Optimistic concurrency (ETag / If-Match), Idempotency-Key and whole-transaction retries."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from conftest import Account, Accounts, assert_problem
from sqlalchemy import delete, event, func, select, update
from sqlalchemy.exc import OperationalError

from blogapi import idempotency
from blogapi.auth import dependencies as auth_dependencies
from blogapi.auth.security import hash_password
from blogapi.db import Database, utcnow
from blogapi.idempotency import IdempotencyRecord
from blogapi.models import Post, User
from blogapi.posts import router as router_module
from blogapi.posts.models import post_tag

API = "/api/v1"
POSTS = f"{API}/posts"
USERS = f"{API}/users"
PROBLEM = "application/problem+json"
# A strong ETag starts with the resource's version: `"3"`, a post's `"3.<author version>"`, a
# user shown without their email `"3.public"`.
STRONG_ETAG = re.compile(r'^"(\d+)(?:\.(?:\d+|public))?"$')
INSERT_INTO_POST = re.compile(r"^\s*INSERT INTO [`\"]?post[`\"]?[\s(]", re.IGNORECASE)


# --- helpers ---------------------------------------------------------------------------------------


def version_of(response: httpx.Response) -> int:
    """The version a strong ETag starts with; fails for a missing or weak tag."""
    etag = response.headers.get("etag")
    assert etag is not None, f"no ETag on {response.request.method} {response.request.url}"
    match = STRONG_ETAG.match(etag)
    assert match is not None, f"not a strong ETag: {etag!r}"
    return int(match.group(1))


async def create_post(
    client: httpx.AsyncClient, account: Account, title: str = "A title", **fields: Any
) -> httpx.Response:
    response = await client.post(POSTS, json={"title": title, **fields}, headers=account.headers)
    assert response.status_code == 201, response.text
    return response


async def read(client: httpx.AsyncClient, path: str, viewer: Account | None = None) -> httpx.Response:
    """GET `path`, as `viewer` if given: a user's ETag for If-Match is the one their owner sees."""
    response = await client.get(path, headers=viewer.headers if viewer else None)
    assert response.status_code == 200, response.text
    return response


async def count(database: Database, model: type[Post] | type[User] | type[IdempotencyRecord]) -> int:
    async with database.sessionmaker() as session:
        total = await session.scalar(select(func.count()).select_from(model))
    assert total is not None
    return total


def with_if_match(account: Account, if_match: str) -> dict[str, str]:
    return {**account.headers, "If-Match": if_match}


def with_key(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


# --- ETags on reads and creates --------------------------------------------------------------------


async def test_reading_a_post_returns_a_strong_etag(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    created = await create_post(client, ann)
    response = await read(client, f"{POSTS}/{created.json()['id']}")
    assert version_of(response) == version_of(created)


async def test_creating_a_post_returns_an_etag_for_the_first_version(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    created = await create_post(client, ann)
    assert version_of(created) >= 1


async def test_signing_up_returns_an_etag_that_reading_the_user_repeats(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    response = await client.post(
        USERS, json={"name": "Ann", "email": "ann@example.com", "password": "correct horse battery"}
    )
    assert response.status_code == 201, response.text
    user_id = response.json()["id"]
    assert version_of(await read(client, f"{USERS}/{user_id}")) == version_of(response)


async def test_users_me_and_users_id_return_the_same_strong_etag(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    me = await client.get(f"{USERS}/me", headers=ann.headers)
    assert me.status_code == 200, me.text
    assert me.headers["etag"] == (await read(client, f"{USERS}/{ann.id}", ann)).headers["etag"]
    assert version_of(me) == version_of(await read(client, f"{USERS}/{ann.id}"))  # the public copy's tag


# --- If-Match on posts -----------------------------------------------------------------------------


async def test_patching_a_post_returns_the_next_etag_which_a_read_repeats(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    created = await create_post(client, ann)
    post_id = created.json()["id"]
    response = await client.patch(f"{POSTS}/{post_id}", json={"title": "New"}, headers=ann.headers)
    assert response.status_code == 200, response.text
    assert version_of(response) == version_of(created) + 1
    assert version_of(await read(client, f"{POSTS}/{post_id}")) == version_of(response)


async def test_patching_a_post_with_the_current_etag_succeeds(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post_id = (await create_post(client, ann)).json()["id"]
    current = (await read(client, f"{POSTS}/{post_id}")).headers["etag"]
    response = await client.patch(
        f"{POSTS}/{post_id}", json={"title": "New"}, headers=with_if_match(ann, current)
    )
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "New"
    assert response.headers["etag"] != current


async def test_patching_a_post_with_a_stale_etag_is_412_and_changes_nothing(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post_id = (await create_post(client, ann, "First")).json()["id"]
    stale = (await read(client, f"{POSTS}/{post_id}")).headers["etag"]
    second = await client.patch(f"{POSTS}/{post_id}", json={"title": "Second"}, headers=ann.headers)
    assert second.status_code == 200, second.text

    response = await client.patch(
        f"{POSTS}/{post_id}", json={"title": "Third", "body": "changed"}, headers=with_if_match(ann, stale)
    )
    assert_problem(response, 412)
    after = await read(client, f"{POSTS}/{post_id}")
    assert after.json()["title"] == "Second"
    assert after.json()["body"] == ""
    assert after.headers["etag"] == second.headers["etag"]


async def test_patching_a_post_with_if_match_star_succeeds(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post_id = (await create_post(client, ann)).json()["id"]
    response = await client.patch(
        f"{POSTS}/{post_id}", json={"title": "Star"}, headers=with_if_match(ann, "*")
    )
    assert response.status_code == 200, response.text
    assert (await read(client, f"{POSTS}/{post_id}")).json()["title"] == "Star"


async def test_a_weak_etag_never_matches_even_for_the_current_version(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    created = await create_post(client, ann, "Kept")
    post_id = created.json()["id"]
    weak = f"W/{created.headers['etag']}"
    response = await client.patch(
        f"{POSTS}/{post_id}", json={"title": "Weak"}, headers=with_if_match(ann, weak)
    )
    assert_problem(response, 412)
    assert (await read(client, f"{POSTS}/{post_id}")).json()["title"] == "Kept"


async def test_an_if_match_list_containing_the_current_etag_succeeds(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    created = await create_post(client, ann)
    post_id = created.json()["id"]
    listed = f'"{version_of(created) + 100}", {created.headers["etag"]}'
    response = await client.patch(
        f"{POSTS}/{post_id}", json={"title": "Listed"}, headers=with_if_match(ann, listed)
    )
    assert response.status_code == 200, response.text
    assert (await read(client, f"{POSTS}/{post_id}")).json()["title"] == "Listed"


async def test_an_if_match_list_without_the_current_etag_is_412(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    created = await create_post(client, ann, "Kept")
    post_id = created.json()["id"]
    current = version_of(created)
    listed = f'"{current + 100}", "{current + 101}"'
    response = await client.patch(
        f"{POSTS}/{post_id}", json={"title": "Listed"}, headers=with_if_match(ann, listed)
    )
    assert_problem(response, 412)
    assert (await read(client, f"{POSTS}/{post_id}")).json()["title"] == "Kept"


@pytest.mark.parametrize(
    "if_match", ["3", "W/3", '"3" "4"', '"3",,"4"', 'x"3"', '"3', "**", '"a b"'], ids=repr
)
async def test_an_if_match_that_is_not_entity_tags_is_422_and_changes_nothing(
    client: httpx.AsyncClient, accounts: Accounts, if_match: str
) -> None:
    ann = await accounts.create()
    created = await create_post(client, ann, "Kept")
    post_id = created.json()["id"]
    for response in (
        await client.patch(f"{POSTS}/{post_id}", json={"title": "New"}, headers=with_if_match(ann, if_match)),
        await client.delete(f"{POSTS}/{post_id}", headers=with_if_match(ann, if_match)),
        await client.patch(f"{USERS}/{ann.id}", json={"name": "New"}, headers=with_if_match(ann, if_match)),
        await client.delete(f"{USERS}/{ann.id}", headers=with_if_match(ann, if_match)),
    ):
        problem = assert_problem(response, 422)
        assert [error["loc"] for error in problem["errors"]] == [["header", "If-Match"]], problem
    assert (await read(client, f"{POSTS}/{post_id}")).json()["title"] == "Kept"
    assert (await read(client, f"{USERS}/{ann.id}")).json()["name"] == ann.name


async def test_patching_a_post_without_if_match_proceeds(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post_id = (await create_post(client, ann)).json()["id"]
    await client.patch(f"{POSTS}/{post_id}", json={"title": "Moved on"}, headers=ann.headers)
    response = await client.patch(f"{POSTS}/{post_id}", json={"title": "Unconditional"}, headers=ann.headers)
    assert response.status_code == 200, response.text
    assert (await read(client, f"{POSTS}/{post_id}")).json()["title"] == "Unconditional"


async def test_deleting_a_post_with_a_stale_etag_is_412_and_keeps_it(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    created = await create_post(client, ann)
    post_id = created.json()["id"]
    await client.patch(f"{POSTS}/{post_id}", json={"title": "Moved on"}, headers=ann.headers)
    response = await client.delete(f"{POSTS}/{post_id}", headers=with_if_match(ann, created.headers["etag"]))
    assert_problem(response, 412)
    assert (await read(client, f"{POSTS}/{post_id}")).json()["title"] == "Moved on"


async def test_deleting_a_post_with_the_current_etag_is_204(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post_id = (await create_post(client, ann)).json()["id"]
    current = (await read(client, f"{POSTS}/{post_id}")).headers["etag"]
    response = await client.delete(f"{POSTS}/{post_id}", headers=with_if_match(ann, current))
    assert response.status_code == 204, response.text
    assert (await client.get(f"{POSTS}/{post_id}")).status_code == 404


async def test_changing_only_the_tags_moves_the_etag_and_updated_at(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    created = await create_post(client, ann, tags=["old"])
    post_id = created.json()["id"]
    response = await client.patch(f"{POSTS}/{post_id}", json={"tags": ["new"]}, headers=ann.headers)
    assert response.status_code == 200, response.text
    assert response.json()["tags"] == ["new"]
    assert version_of(response) == version_of(created) + 1
    assert response.json()["updated_at"] != created.json()["updated_at"]
    after = await read(client, f"{POSTS}/{post_id}")
    assert version_of(after) == version_of(created) + 1
    assert after.json()["updated_at"] == response.json()["updated_at"]
    # The old ETag no longer matches: a client holding it cannot overwrite the tag change.
    stale = await client.patch(
        f"{POSTS}/{post_id}", json={"tags": ["other"]}, headers=with_if_match(ann, created.headers["etag"])
    )
    assert_problem(stale, 412)


async def test_of_two_concurrent_patches_with_one_etag_exactly_one_wins(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post_id = (await create_post(client, ann)).json()["id"]
    for round_ in range(5):
        before = await read(client, f"{POSTS}/{post_id}")
        titles = (f"A{round_}", f"B{round_}")
        responses = await asyncio.gather(
            *(
                client.patch(
                    f"{POSTS}/{post_id}",
                    json={"title": title},
                    headers=with_if_match(ann, before.headers["etag"]),
                )
                for title in titles
            )
        )
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200, 412], [response.text for response in responses]
        (winner,) = (
            title for title, response in zip(titles, responses, strict=True) if response.status_code == 200
        )
        (loser,) = (response for response in responses if response.status_code == 412)
        assert_problem(loser, 412)
        after = await read(client, f"{POSTS}/{post_id}")
        assert after.json()["title"] == winner
        assert version_of(after) == version_of(before) + 1


async def test_twenty_concurrent_patches_without_if_match_all_succeed_and_all_count(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    created = await create_post(client, ann)
    post_id = created.json()["id"]
    responses = await asyncio.gather(
        *(client.patch(f"{POSTS}/{post_id}", json={"title": f"T{i}"}, headers=ann.headers) for i in range(20))
    )
    statuses = [response.status_code for response in responses]
    assert statuses == [200] * 20, (
        f"{statuses.count(200)} of 20 succeeded",
        [response.text for response in responses if response.status_code != 200],
    )
    after = await read(client, f"{POSTS}/{post_id}")
    assert version_of(after) == version_of(created) + 20
    assert after.json()["title"] in {f"T{i}" for i in range(20)}


# --- If-Match on users -----------------------------------------------------------------------------


async def test_patching_a_user_returns_the_next_etag(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    before = await read(client, f"{USERS}/{ann.id}")
    response = await client.patch(f"{USERS}/{ann.id}", json={"name": "Renamed"}, headers=ann.headers)
    assert response.status_code == 200, response.text
    assert version_of(response) == version_of(before) + 1
    assert version_of(await read(client, f"{USERS}/{ann.id}")) == version_of(response)


async def test_patching_a_user_with_the_current_etag_succeeds(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    current = (await read(client, f"{USERS}/{ann.id}", ann)).headers["etag"]
    response = await client.patch(
        f"{USERS}/{ann.id}", json={"name": "Renamed"}, headers=with_if_match(ann, current)
    )
    assert response.status_code == 200, response.text
    assert (await read(client, f"{USERS}/{ann.id}")).json()["name"] == "Renamed"


async def test_patching_a_user_with_a_stale_etag_is_412_and_changes_nothing(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    stale = (await read(client, f"{USERS}/{ann.id}", ann)).headers["etag"]
    await client.patch(f"{USERS}/{ann.id}", json={"name": "Second"}, headers=ann.headers)
    response = await client.patch(
        f"{USERS}/{ann.id}", json={"name": "Third"}, headers=with_if_match(ann, stale)
    )
    assert_problem(response, 412)
    assert (await read(client, f"{USERS}/{ann.id}")).json()["name"] == "Second"


@pytest.mark.parametrize(
    ("if_match", "expected"), [("*", 200), ("weak", 412), ("list", 200)], ids=["star", "weak", "list"]
)
async def test_if_match_forms_on_a_user(
    client: httpx.AsyncClient, accounts: Accounts, if_match: str, expected: int
) -> None:
    ann = await accounts.create("Original")
    current = (await read(client, f"{USERS}/{ann.id}", ann)).headers["etag"]
    header = {"*": "*", "weak": f"W/{current}", "list": f'"999999", {current}'}[if_match]
    response = await client.patch(
        f"{USERS}/{ann.id}", json={"name": "Changed"}, headers=with_if_match(ann, header)
    )
    assert response.status_code == expected, response.text
    name = (await read(client, f"{USERS}/{ann.id}")).json()["name"]
    assert name == ("Changed" if expected == 200 else "Original")


async def test_deleting_a_user_with_a_stale_etag_is_412_and_keeps_them(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    stale = (await read(client, f"{USERS}/{ann.id}", ann)).headers["etag"]
    await client.patch(f"{USERS}/{ann.id}", json={"name": "Second"}, headers=ann.headers)
    response = await client.delete(f"{USERS}/{ann.id}", headers=with_if_match(ann, stale))
    assert_problem(response, 412)
    await read(client, f"{USERS}/{ann.id}")


async def test_deleting_a_user_with_the_current_etag_is_204(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    current = (await read(client, f"{USERS}/{ann.id}", ann)).headers["etag"]
    response = await client.delete(f"{USERS}/{ann.id}", headers=with_if_match(ann, current))
    assert response.status_code == 204, response.text
    assert (await client.get(f"{USERS}/{ann.id}")).status_code == 404


async def test_of_two_concurrent_user_patches_with_one_etag_exactly_one_wins(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    for round_ in range(5):
        before = await read(client, f"{USERS}/{ann.id}", ann)
        names = (f"A{round_}", f"B{round_}")
        responses = await asyncio.gather(
            *(
                client.patch(
                    f"{USERS}/{ann.id}",
                    json={"name": name},
                    headers=with_if_match(ann, before.headers["etag"]),
                )
                for name in names
            )
        )
        assert sorted(response.status_code for response in responses) == [200, 412], [
            response.text for response in responses
        ]
        (winner,) = (
            name for name, response in zip(names, responses, strict=True) if response.status_code == 200
        )
        after = await read(client, f"{USERS}/{ann.id}")
        assert after.json()["name"] == winner
        assert version_of(after) == version_of(before) + 1


# --- Idempotency-Key -------------------------------------------------------------------------------


async def test_a_retried_post_with_the_same_key_replays_the_first_response(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    headers = with_key(ann.headers, "retry-1")
    payload = {"title": "Once", "body": "only once", "tags": ["b", "a"]}
    first = await client.post(POSTS, json=payload, headers=headers)
    second = await client.post(POSTS, json=payload, headers=headers)
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    assert second.content == first.content
    assert second.headers["location"] == first.headers["location"] == f"{POSTS}/{first.json()['id']}"
    assert second.headers["etag"] == first.headers["etag"]
    assert second.headers["content-type"] == first.headers["content-type"]
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert await count(database, Post) == 1


async def test_the_same_key_with_a_different_body_is_422_and_creates_nothing(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    headers = with_key(ann.headers, "retry-2")
    first = await client.post(POSTS, json={"title": "One"}, headers=headers)
    assert first.status_code == 201, first.text
    response = await client.post(POSTS, json={"title": "Two"}, headers=headers)
    assert_problem(response, 422)
    assert await count(database, Post) == 1


async def test_keys_are_scoped_to_the_caller(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann, bob = await accounts.create(), await accounts.create()
    payload = {"title": "Same"}
    first = await client.post(POSTS, json=payload, headers=with_key(ann.headers, "shared"))
    second = await client.post(POSTS, json=payload, headers=with_key(bob.headers, "shared"))
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    assert "idempotent-replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    assert second.json()["author"]["id"] == bob.id
    assert await count(database, Post) == 2


async def test_ten_concurrent_posts_with_one_key_create_one_post(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    headers = with_key(ann.headers, "burst")
    responses = await asyncio.gather(
        *(client.post(POSTS, json={"title": "Burst"}, headers=headers) for _ in range(10))
    )
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {201, 409}, [response.text for response in responses]
    created = [response for response in responses if response.status_code == 201]
    assert created, statuses
    assert len({response.content for response in created}) == 1
    assert len([response for response in created if "idempotent-replayed" not in response.headers]) == 1
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409)
    assert await count(database, Post) == 1
    assert await count(database, IdempotencyRecord) == 1


async def test_a_retried_sign_up_with_the_same_key_replays_the_first_response(
    client: httpx.AsyncClient, database: Database
) -> None:
    payload = {"name": "Ann", "email": "ann@example.com", "password": "correct horse battery"}
    headers = {"Idempotency-Key": "signup-1"}
    first = await client.post(USERS, json=payload, headers=headers)
    second = await client.post(USERS, json=payload, headers=headers)
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    assert second.content == first.content
    assert second.headers["location"] == first.headers["location"]
    assert second.headers["etag"] == first.headers["etag"]
    assert second.headers["idempotent-replayed"] == "true"
    assert await count(database, User) == 1


async def test_a_keyed_sign_up_holds_no_pooled_connection_while_it_hashes_the_password(
    client: httpx.AsyncClient, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key's claim opens the transaction; Argon2 inside it would hold a connection (on
    # SQLite the write lock) for its whole run, and a burst of sign-ups would drain the pool.
    checked_out_while_hashing = []

    async def observed_hash_password(password: str, *, concurrency: int) -> str:
        checked_out_while_hashing.append(database.engine.pool.checkedout())  # type: ignore[attr-defined]
        return await hash_password(password, concurrency=concurrency)

    monkeypatch.setattr("blogapi.users.service.hash_password", observed_hash_password)
    payload = {"name": "Ann", "email": "ann@example.com", "password": "correct horse battery"}
    response = await client.post(USERS, json=payload, headers={"Idempotency-Key": "signup-3"})
    assert response.status_code == 201, response.text
    assert checked_out_while_hashing == [0]


async def test_a_sign_up_key_reused_with_another_email_is_422(
    client: httpx.AsyncClient, database: Database
) -> None:
    headers = {"Idempotency-Key": "signup-2"}
    first = await client.post(
        USERS,
        json={"name": "Ann", "email": "ann@example.com", "password": "correct horse battery"},
        headers=headers,
    )
    assert first.status_code == 201, first.text
    response = await client.post(
        USERS,
        json={"name": "Ann", "email": "bob@example.com", "password": "correct horse battery"},
        headers=headers,
    )
    assert_problem(response, 422)
    assert await count(database, User) == 1


async def test_a_sign_up_refused_with_409_does_not_store_its_key(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    payload = {"name": "Impostor", "email": ann.email, "password": "correct horse battery"}
    headers = {"Idempotency-Key": "signup-3"}
    first = await client.post(USERS, json=payload, headers=headers)
    assert_problem(first, 409)
    second = await client.post(USERS, json=payload, headers=headers)
    assert_problem(second, 409)
    assert "idempotent-replayed" not in second.headers
    assert await count(database, IdempotencyRecord) == 0
    assert await count(database, User) == 1


async def test_an_expired_key_no_longer_replays(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    headers = with_key(ann.headers, "expiring")
    first = await client.post(POSTS, json={"title": "Expiring"}, headers=headers)
    assert first.status_code == 201, first.text
    async with database.sessionmaker.begin() as session:
        result = await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == "expiring")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        assert result.rowcount == 1  # type: ignore[attr-defined]
    second = await client.post(POSTS, json={"title": "Expiring"}, headers=headers)
    assert second.status_code == 201, second.text
    assert "idempotent-replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    assert await count(database, Post) == 2
    # The expired record was replaced: the key now replays the second post.
    third = await client.post(POSTS, json={"title": "Expiring"}, headers=headers)
    assert third.headers["idempotent-replayed"] == "true"
    assert third.content == second.content
    assert await count(database, IdempotencyRecord) == 1


@pytest.mark.parametrize(
    "key",
    [b"", b"with space", "clé".encode(), "ключ".encode(), b"k" * 256, b"tab\there"],
    ids=["empty", "space", "latin1", "cyrillic", "256-chars", "tab"],
)
async def test_an_invalid_key_is_422_and_creates_nothing(
    client: httpx.AsyncClient, accounts: Accounts, database: Database, key: bytes
) -> None:
    ann = await accounts.create()
    headers = [
        *((name.encode(), value.encode()) for name, value in ann.headers.items()),
        (b"Idempotency-Key", key),
    ]
    response = await client.post(POSTS, json={"title": "Keyed"}, headers=headers)
    problem = assert_problem(response, 422)
    assert [error["loc"] for error in problem["errors"]] == [["header", "Idempotency-Key"]]
    assert await count(database, Post) == 0


async def test_a_key_of_255_printable_characters_is_accepted(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    key = ("!~" * 128)[:255]
    first = await client.post(POSTS, json={"title": "Long key"}, headers=with_key(ann.headers, key))
    second = await client.post(POSTS, json={"title": "Long key"}, headers=with_key(ann.headers, key))
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    assert second.headers["idempotent-replayed"] == "true"
    assert await count(database, Post) == 1


async def test_keys_differing_only_in_case_are_different_keys(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    first = await client.post(POSTS, json={"title": "Case"}, headers=with_key(ann.headers, "Key"))
    second = await client.post(POSTS, json={"title": "Case"}, headers=with_key(ann.headers, "key"))
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    assert "idempotent-replayed" not in second.headers
    assert await count(database, Post) == 2


async def test_without_a_key_two_identical_posts_create_two_posts(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    first = await client.post(POSTS, json={"title": "Twice"}, headers=ann.headers)
    second = await client.post(POSTS, json={"title": "Twice"}, headers=ann.headers)
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    assert "idempotent-replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    assert await count(database, Post) == 2


# --- whole-transaction retries ---------------------------------------------------------------------


class InjectedError(Exception):
    """Stands in for a driver's exception."""


@contextmanager
def failing_post_inserts(database: Database, message: str, *, times: int) -> Iterator[list[str]]:
    """Make the first `times` INSERTs into `post` raise OperationalError(message); yields the attempts."""
    attempts: list[str] = []

    def fail(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if INSERT_INTO_POST.match(statement):
            attempts.append(statement)
            if len(attempts) <= times:
                raise OperationalError("INSERT", {}, InjectedError(message))

    event.listen(database.engine.sync_engine, "before_cursor_execute", fail)
    try:
        yield attempts
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", fail)


async def test_a_transient_failure_is_retried_and_the_failed_attempt_leaves_nothing(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    with failing_post_inserts(database, "database is locked", times=1) as attempts:
        response = await client.post(
            POSTS, json={"title": "Retried", "tags": ["x", "y"]}, headers=ann.headers
        )
    assert response.status_code == 201, response.text
    assert len(attempts) == 2
    assert response.json()["tags"] == ["x", "y"]
    assert await count(database, Post) == 1
    async with database.sessionmaker() as session:
        links = await session.scalar(select(func.count()).select_from(post_tag))
    assert links == 2
    assert (await read(client, f"{POSTS}/{response.json()['id']}")).json()["title"] == "Retried"


async def test_a_retried_create_with_a_key_stores_the_key_once(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    headers = with_key(ann.headers, "retried")
    with failing_post_inserts(database, "database is locked", times=1) as attempts:
        first = await client.post(POSTS, json={"title": "Keyed"}, headers=headers)
    assert first.status_code == 201, first.text
    assert len(attempts) == 2
    assert "idempotent-replayed" not in first.headers
    replay = await client.post(POSTS, json={"title": "Keyed"}, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content
    assert await count(database, Post) == 1
    assert await count(database, IdempotencyRecord) == 1


async def test_a_transient_failure_on_every_attempt_is_503_with_retry_after(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    with failing_post_inserts(database, "database is locked", times=100) as attempts:
        response = await client.post(POSTS, json={"title": "Never"}, headers=ann.headers)
    assert_problem(response, 503)
    assert int(response.headers["retry-after"]) >= 1
    assert len(attempts) == 3
    assert await count(database, Post) == 0


async def test_a_non_transient_operational_error_is_not_retried(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    with failing_post_inserts(database, "disk I/O error", times=100) as attempts:
        response = await client.post(POSTS, json={"title": "Never"}, headers=ann.headers)
    assert_problem(response, 503)
    assert len(attempts) == 1
    assert await count(database, Post) == 0


async def test_expired_keys_of_anyone_are_pruned_so_the_table_stays_bounded(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    expired = 10 * idempotency.PRUNE_BATCH
    async with database.sessionmaker.begin() as session:
        session.add_all(
            IdempotencyRecord(
                owner=f"user:{n + 1_000_000}",
                key=f"old-{n}",
                fingerprint="0" * 64,
                status_code=201,
                response_body="{}",
                expires_at=utcnow() - timedelta(hours=1),
            )
            for n in range(expired)
        )
    claims = 20
    for n in range(claims):
        response = await client.post(
            POSTS, json={"title": "Keyed"}, headers=with_key(ann.headers, f"new-{n}")
        )
        assert response.status_code == 201, response.text
    # However many expired keys there were, what is left are the live ones.
    async with database.sessionmaker() as session:
        keys = set(await session.scalars(select(IdempotencyRecord.key)))
    assert keys == {f"new-{n}" for n in range(claims)}


# --- a post racing its author's deletion -----------------------------------------------------------


async def test_a_post_whose_author_is_deleted_meanwhile_is_401_on_every_backend(
    client: httpx.AsyncClient,
    accounts: Accounts,
    database: Database,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ann = await accounts.create()

    async def delete_ann() -> None:
        async with database.sessionmaker.begin() as session:
            await session.execute(delete(User).where(User.id == ann.id))

    if backend == "sqlite":
        # The post's transaction holds the write lock from its first statement: the
        # deletion can only come before it.
        await delete_ann()
    else:
        found = auth_dependencies.current_user

        async def found_then_deleted(connection: Any, caller: Any) -> Any:
            me = await found(connection, caller)
            await delete_ann()  # committed between the lookup and the insert
            return me

        monkeypatch.setattr(router_module, "current_user", found_then_deleted)
    response = await client.post(POSTS, json={"title": "Orphan"}, headers=ann.headers)
    problem = assert_problem(response, 401)
    assert problem["detail"] == "the access token is missing, invalid or expired"
    assert response.headers["www-authenticate"] == "Bearer"
    assert await count(database, Post) == 0
