"""Conditional reads: If-None-Match with a user's or a post's current ETag is a 304 without a body."""

from __future__ import annotations

import httpx
import pytest
from conftest import Account, Accounts, assert_problem

API = "/api/v1"
RESOURCES = ["post", "user"]


async def resource(client: httpx.AsyncClient, accounts: Accounts, kind: str) -> tuple[str, Account]:
    """The URL of a new post or user, and its owner."""
    ann = await accounts.create()
    if kind == "user":
        return f"{API}/users/{ann.id}", ann
    created = await client.post(f"{API}/posts", json={"title": "t"}, headers=ann.headers)
    assert created.status_code == 201, created.text
    return f"{API}/posts/{created.json()['id']}", ann


async def current_etag(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    return response.headers["etag"]


@pytest.mark.parametrize("kind", RESOURCES)
async def test_if_none_match_with_the_current_etag_is_304_without_a_body(
    client: httpx.AsyncClient, accounts: Accounts, kind: str
) -> None:
    url, _ = await resource(client, accounts, kind)
    etag = await current_etag(client, url)
    response = await client.get(url, headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert "content-length" not in response.headers or response.headers["content-length"] == "0"


@pytest.mark.parametrize(
    "header",
    ['"999", {etag}', "W/{etag}", "*", ' "0" ,W/{etag} '],
    ids=["in-a-list", "weak", "star", "spaced-list"],
)
@pytest.mark.parametrize("kind", RESOURCES)
async def test_if_none_match_compares_weakly_and_takes_lists_and_star(
    client: httpx.AsyncClient, accounts: Accounts, kind: str, header: str
) -> None:
    url, _ = await resource(client, accounts, kind)
    etag = await current_etag(client, url)
    response = await client.get(url, headers={"If-None-Match": header.format(etag=etag)})
    assert response.status_code == 304
    assert response.content == b""


@pytest.mark.parametrize("kind", RESOURCES)
async def test_an_etag_from_before_a_change_gets_the_new_version_with_200(
    client: httpx.AsyncClient, accounts: Accounts, kind: str
) -> None:
    url, owner = await resource(client, accounts, kind)
    old = await current_etag(client, url)
    field = "title" if kind == "post" else "name"
    changed = await client.patch(url, json={field: "changed"}, headers=owner.headers)
    assert changed.status_code == 200, changed.text
    response = await client.get(url, headers={"If-None-Match": old, **owner.headers})
    assert response.status_code == 200
    assert response.json()[field] == "changed"
    assert response.headers["etag"] == changed.headers["etag"] != old


async def test_a_post_s_etag_changes_when_its_author_is_renamed(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """A post shows its author's name: a cached copy with the old name is not confirmed."""
    url, author = await resource(client, accounts, "post")
    old = await current_etag(client, url)
    renamed = await client.patch(f"{API}/users/{author.id}", json={"name": "Renamed"}, headers=author.headers)
    assert renamed.status_code == 200, renamed.text
    response = await client.get(url, headers={"If-None-Match": old})
    assert response.status_code == 200
    assert response.json()["author"]["name"] == "Renamed"
    assert response.headers["etag"] != old
    # If-Match is compared with the same ETag: a change based on the old copy is refused.
    stale = await client.patch(url, json={"title": "t2"}, headers={"If-Match": old, **author.headers})
    assert_problem(stale, 412)
    current = await client.patch(
        url, json={"title": "t2"}, headers={"If-Match": response.headers["etag"], **author.headers}
    )
    assert current.status_code == 200, current.text


async def test_a_user_s_etag_differs_with_the_email_shown_or_hidden(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """An owner's copy shows the email: an anonymous copy's ETag never confirms it (and caches vary)."""
    url, owner = await resource(client, accounts, "user")
    anonymous = await client.get(url)
    assert anonymous.json()["email"] is None
    assert anonymous.headers["vary"] == "Authorization"
    response = await client.get(url, headers={"If-None-Match": anonymous.headers["etag"], **owner.headers})
    assert response.status_code == 200
    assert response.json()["email"] == owner.email
    assert response.headers["etag"] != anonymous.headers["etag"]
    assert response.headers["vary"] == "Authorization"
    confirmed = await client.get(url, headers={"If-None-Match": response.headers["etag"], **owner.headers})
    assert confirmed.status_code == 304
    assert confirmed.headers["vary"] == "Authorization"
    # Only the copy with the email can be the base of a change.
    stale = await client.patch(
        url, json={"name": "n"}, headers={"If-Match": anonymous.headers["etag"], **owner.headers}
    )
    assert_problem(stale, 412)


@pytest.mark.parametrize("kind", RESOURCES)
async def test_if_none_match_star_on_a_missing_resource_is_404(client: httpx.AsyncClient, kind: str) -> None:
    response = await client.get(f"{API}/{kind}s/999999", headers={"If-None-Match": "*"})
    assert_problem(response, 404)


async def test_304_is_declared_for_reading_a_user_and_a_post(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    for path in ("/api/v1/posts/{post_id}", "/api/v1/users/{user_id}"):
        operation = document["paths"][path]["get"]
        assert "ETag" in operation["responses"]["304"]["headers"]
        assert "content" not in operation["responses"]["304"]
        assert any(parameter["name"] == "If-None-Match" for parameter in operation["parameters"])
