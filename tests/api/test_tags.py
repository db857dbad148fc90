"""GET /tags: every tag in use with its post count, most used first."""

from __future__ import annotations

import unicodedata
from typing import Any

import httpx
import pytest
from conftest import Account, Accounts, assert_problem

API = "/api/v1"
PROBLEM = "application/problem+json"


async def create_post(client: httpx.AsyncClient, account: Account, tags: list[str]) -> int:
    response = await client.post(f"{API}/posts", json={"title": "t", "tags": tags}, headers=account.headers)
    assert response.status_code == 201, response.text
    post_id: int = response.json()["id"]
    return post_id


async def list_tags(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get(f"{API}/tags", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def counts(page: dict[str, Any]) -> list[tuple[str, int]]:
    return [(item["name"], item["post_count"]) for item in page["items"]]


async def test_no_tags_is_an_empty_page(client: httpx.AsyncClient) -> None:
    assert await list_tags(client) == {"items": [], "next_cursor": None}


async def test_tags_are_listed_with_their_post_counts(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    await create_post(client, ann, ["python"])
    page = await list_tags(client)
    assert page == {"items": [{"name": "python", "post_count": 1}], "next_cursor": None}


async def test_tags_are_listed_most_used_first_with_ties_by_name(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    bob = await accounts.create()
    await create_post(client, ann, ["zeta", "beta", "alpha"])
    await create_post(client, bob, ["zeta", "beta"])
    await create_post(client, ann, ["zeta", "gamma"])
    await create_post(client, bob, ["delta"])
    assert counts(await list_tags(client)) == [
        ("zeta", 3),
        ("beta", 2),
        ("alpha", 1),
        ("delta", 1),
        ("gamma", 1),
    ]


async def test_a_tag_sent_twice_on_one_post_counts_once(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    await create_post(client, ann, ["Python", "python", "PYTHON"])
    assert counts(await list_tags(client)) == [("python", 1)]


async def test_tags_can_be_paged_through_with_a_limit(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    await create_post(client, ann, ["a", "b", "c", "d", "e"])
    await create_post(client, ann, ["c", "d", "e"])
    await create_post(client, ann, ["e"])
    seen: list[tuple[str, int]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2} if cursor is None else {"limit": 2, "cursor": cursor}
        page = await list_tags(client, **params)
        assert len(page["items"]) <= 2
        seen += counts(page)
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "the walk does not end"
    assert seen == [("e", 3), ("c", 2), ("d", 2), ("a", 1), ("b", 1)]
    assert pages == 3


async def test_paging_splits_tags_with_equal_counts_without_skipping_or_repeating(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    names = [f"tag-{i:02d}" for i in range(7)]
    await create_post(client, ann, names)
    first = await list_tags(client, limit=3)
    second = await list_tags(client, limit=3, cursor=first["next_cursor"])
    third = await list_tags(client, limit=3, cursor=second["next_cursor"])
    walked = [name for page in (first, second, third) for name, _ in counts(page)]
    assert walked == names
    assert third["next_cursor"] is None


async def test_a_tag_is_not_listed_once_its_last_post_is_deleted(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    doomed = await create_post(client, ann, ["lonely", "shared"])
    await create_post(client, ann, ["shared"])
    assert (await client.delete(f"{API}/posts/{doomed}", headers=ann.headers)).status_code == 204
    assert counts(await list_tags(client)) == [("shared", 1)]


async def test_no_tags_are_listed_once_every_post_is_deleted(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    first = await create_post(client, ann, ["a", "b"])
    second = await create_post(client, ann, ["b", "c"])
    for post_id in (first, second):
        assert (await client.delete(f"{API}/posts/{post_id}", headers=ann.headers)).status_code == 204
    assert await list_tags(client) == {"items": [], "next_cursor": None}


async def test_deleting_an_author_uncounts_the_tags_of_their_posts(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    bob = await accounts.create()
    await create_post(client, ann, ["mine", "shared"])
    await create_post(client, ann, ["shared"])
    await create_post(client, bob, ["shared"])
    assert (await client.delete(f"{API}/users/{ann.id}", headers=ann.headers)).status_code == 204
    assert counts(await list_tags(client)) == [("shared", 1)]


async def test_retagging_a_post_with_its_own_tags_keeps_the_counts(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post_id = await create_post(client, ann, ["a", "b"])
    response = await client.patch(f"{API}/posts/{post_id}", json={"tags": ["b", "a"]}, headers=ann.headers)
    assert response.status_code == 200, response.text
    assert response.json()["tags"] == ["a", "b"]
    assert counts(await list_tags(client)) == [("a", 1), ("b", 1)]


async def test_removing_a_tag_from_a_post_updates_the_counts(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    first = await create_post(client, ann, ["a", "b"])
    await create_post(client, ann, ["b"])
    response = await client.patch(f"{API}/posts/{first}", json={"tags": ["c"]}, headers=ann.headers)
    assert response.status_code == 200, response.text
    assert counts(await list_tags(client)) == [("b", 1), ("c", 1)]


async def test_a_tag_is_reused_after_it_fell_out_of_use(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    first = await create_post(client, ann, ["again"])
    assert (await client.delete(f"{API}/posts/{first}", headers=ann.headers)).status_code == 204
    await create_post(client, ann, ["Again"])
    assert counts(await list_tags(client)) == [("again", 1)]


@pytest.mark.parametrize("limit", [0, 101, -1])
async def test_an_out_of_range_limit_on_tags_is_422(client: httpx.AsyncClient, limit: int) -> None:
    assert_problem(await client.get(f"{API}/tags", params={"limit": limit}), 422)


# --- what a tag may be ---------------------------------------------------------------------------

TAGGED_AS = {
    "café": "café",
    "c++": "c++",
    "node.js": "node.js",
    "C#": "c#",
    "machine_learning": "machine_learning",
    "Программирование": "программирование",
    "機械学習": "機械学習",
    "हिन्दी": "हिन्दी",
}


@pytest.mark.parametrize(("sent", "stored"), TAGGED_AS.items(), ids=TAGGED_AS.values())
async def test_tags_people_use_are_accepted_stored_and_filtered_by(
    client: httpx.AsyncClient, accounts: Accounts, sent: str, stored: str
) -> None:
    ann = await accounts.create()
    post_id = await create_post(client, ann, [sent, "plain"])
    read = await client.get(f"{API}/posts/{post_id}")
    assert read.json()["tags"] == sorted([stored, "plain"])
    assert counts(await list_tags(client)) == sorted([(stored, 1), ("plain", 1)])
    for query in (sent, stored):
        found = await client.get(f"{API}/posts", params={"tag": query})
        assert [post["id"] for post in found.json()["items"]] == [post_id], query


async def test_a_tag_with_url_reserved_characters_filters_when_percent_encoded(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    cpp = await create_post(client, ann, ["c++"])
    csharp = await create_post(client, ann, ["c#"])
    await create_post(client, ann, ["c"])
    for raw_query, post_id in (("tag=c%2B%2B", cpp), ("tag=C%23", csharp)):
        found = await client.get(f"{API}/posts?{raw_query}")
        assert found.status_code == 200, found.text
        assert [post["id"] for post in found.json()["items"]] == [post_id], raw_query


async def test_tags_differing_in_case_or_unicode_form_are_one_tag(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    composed = unicodedata.normalize("NFC", "Café")
    decomposed = unicodedata.normalize("NFD", "café")
    assert composed.lower() != decomposed
    first = await create_post(client, ann, [composed, decomposed])
    await create_post(client, ann, ["CAFÉ"])
    assert counts(await list_tags(client)) == [("café", 2)]
    read = await client.get(f"{API}/posts/{first}")
    assert read.json()["tags"] == ["café"]
    found = await client.get(f"{API}/posts", params={"tag": decomposed})
    assert len(found.json()["items"]) == 2


async def test_a_tag_is_limited_to_32_characters_not_bytes(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    # 32 characters, of 3 bytes each in UTF-8; the decomposed "é" counts once.
    longest = ["字" * 32, unicodedata.normalize("NFD", "é") * 32]
    post_id = await create_post(client, ann, longest)
    read = await client.get(f"{API}/posts/{post_id}")
    assert read.json()["tags"] == sorted(["字" * 32, "é" * 32])
    response = await client.post(
        f"{API}/posts", json={"title": "t", "tags": ["字" * 33]}, headers=ann.headers
    )
    assert_problem(response, 422)


async def test_twenty_of_the_longest_non_latin_tags_are_read_back_whole(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    tags = sorted(f"{chr(0x4E00 + number)}" * 32 for number in range(20))
    post_id = await create_post(client, ann, tags)
    assert (await client.get(f"{API}/posts/{post_id}")).json()["tags"] == tags
    listed = await client.get(f"{API}/posts", params={"tag": tags[-1]})
    assert listed.json()["items"][0]["tags"] == tags


async def test_tags_are_in_the_same_order_after_a_patch_as_after_a_get(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post_id = await create_post(client, ann, ["x"])
    tags = list(TAGGED_AS)
    patched = await client.patch(f"{API}/posts/{post_id}", json={"tags": tags}, headers=ann.headers)
    assert patched.status_code == 200, patched.text
    read = await client.get(f"{API}/posts/{post_id}")
    assert patched.json()["tags"] == read.json()["tags"] == sorted(TAGGED_AS.values())
