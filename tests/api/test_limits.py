"""The request body size limit: declared or streamed, over the limit is 413; at the limit is served."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from conftest import Account, Accounts, assert_problem

from blogapi.config import Settings

API = "/api/v1"
PROBLEM = "application/problem+json"
JSON = {"Content-Type": "application/json"}


def padded_json(payload: dict[str, Any], size: int) -> bytes:
    """`payload` as JSON, padded with trailing whitespace (still valid JSON) to exactly `size` bytes."""
    raw = json.dumps(payload).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


async def chunked(data: bytes, chunk_size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk_size):
        yield data[start : start + chunk_size]


def assert_sent_chunked(response: httpx.Response) -> None:
    """The request really went without a Content-Length, so only streaming can enforce the limit."""
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"


async def post_count(client: httpx.AsyncClient) -> int:
    response = await client.get(f"{API}/posts", params={"limit": 100})
    assert response.status_code == 200, response.text
    return len(response.json()["items"])


async def create_post(client: httpx.AsyncClient, account: Account) -> dict[str, Any]:
    response = await client.post(f"{API}/posts", json={"title": "Before"}, headers=account.headers)
    assert response.status_code == 201, response.text
    post: dict[str, Any] = response.json()
    return post


async def test_a_declared_body_over_the_limit_is_413(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    body = padded_json({"title": "too big"}, settings.max_body_bytes + 1)
    response = await client.post(f"{API}/posts", content=body, headers={**ann.headers, **JSON})
    assert response.request.headers["content-length"] == str(settings.max_body_bytes + 1)
    problem = assert_problem(response, 413)
    assert str(settings.max_body_bytes) in problem["detail"]
    assert await post_count(client) == 0


async def test_a_much_larger_declared_body_is_413(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    body = padded_json({"title": "huge"}, settings.max_body_bytes * 16)
    response = await client.post(f"{API}/posts", content=body, headers={**ann.headers, **JSON})
    assert_problem(response, 413)


@pytest.mark.parametrize("chunk_size", [1024, 64 * 1024 + 1], ids=["many-chunks", "one-chunk"])
async def test_a_streamed_body_over_the_limit_is_413(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings, chunk_size: int
) -> None:
    ann = await accounts.create()
    body = padded_json({"title": "too big"}, settings.max_body_bytes + 1)
    response = await client.post(
        f"{API}/posts", content=chunked(body, chunk_size), headers={**ann.headers, **JSON}
    )
    assert_sent_chunked(response)
    assert_problem(response, 413)
    assert await post_count(client) == 0


async def test_a_much_larger_streamed_body_is_413(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    body = padded_json({"title": "huge"}, settings.max_body_bytes * 16)
    response = await client.post(f"{API}/posts", content=chunked(body, 8192), headers={**ann.headers, **JSON})
    assert_sent_chunked(response)
    assert_problem(response, 413)


async def test_a_declared_body_of_exactly_the_limit_is_served(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    body = padded_json({"title": "at the limit"}, settings.max_body_bytes)
    response = await client.post(f"{API}/posts", content=body, headers={**ann.headers, **JSON})
    assert response.status_code == 201, response.text
    assert response.json()["title"] == "at the limit"


async def test_a_streamed_body_of_exactly_the_limit_is_served(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    body = padded_json({"title": "at the limit"}, settings.max_body_bytes)
    response = await client.post(f"{API}/posts", content=chunked(body, 1000), headers={**ann.headers, **JSON})
    assert_sent_chunked(response)
    assert response.status_code == 201, response.text
    assert response.json()["title"] == "at the limit"


async def test_a_valid_post_with_a_long_body_under_the_limit_is_created(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    text = "€" * 20_000  # the longest body allowed, 60,000 bytes of UTF-8
    payload = {"title": "Long", "body": text}
    assert len(json.dumps(payload, ensure_ascii=False).encode()) < settings.max_body_bytes
    response = await client.post(f"{API}/posts", json=payload, headers=ann.headers)
    assert response.status_code == 201, response.text
    stored = await client.get(response.headers["location"])
    assert stored.json()["body"] == text


async def test_an_update_over_the_limit_is_413_and_changes_nothing(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann)
    body = padded_json({"title": "After"}, settings.max_body_bytes + 1)
    response = await client.patch(f"{API}/posts/{post['id']}", content=body, headers={**ann.headers, **JSON})
    assert_problem(response, 413)
    assert (await client.get(f"{API}/posts/{post['id']}")).json()["title"] == "Before"


async def test_a_streamed_update_over_the_limit_is_413_and_changes_nothing(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann)
    body = padded_json({"title": "After"}, settings.max_body_bytes + 1)
    response = await client.patch(
        f"{API}/posts/{post['id']}", content=chunked(body, 4096), headers={**ann.headers, **JSON}
    )
    assert_sent_chunked(response)
    assert_problem(response, 413)
    assert (await client.get(f"{API}/posts/{post['id']}")).json()["title"] == "Before"


@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "streamed"])
async def test_the_limit_applies_to_sign_up_too(
    client: httpx.AsyncClient, settings: Settings, streamed: bool
) -> None:
    body = padded_json(
        {"name": "Big", "email": "big@example.com", "password": "long enough"}, settings.max_body_bytes + 1
    )
    content: bytes | AsyncIterator[bytes] = chunked(body, 4096) if streamed else body
    response = await client.post(f"{API}/users", content=content, headers=JSON)
    assert_problem(response, 413)
    users = await client.get(f"{API}/users")
    assert users.status_code == 200
    assert users.json()["items"] == []


async def test_the_server_keeps_serving_after_a_refused_body(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    body = padded_json({"title": "too big"}, settings.max_body_bytes + 1)
    refused = await client.post(f"{API}/posts", content=chunked(body, 4096), headers={**ann.headers, **JSON})
    assert_problem(refused, 413)
    await create_post(client, ann)
    assert await post_count(client) == 1
