"""Problem details name their kind in `type`, and validation messages say what is wrong in words."""

from __future__ import annotations

import httpx
from conftest import PASSWORD, Accounts, assert_problem

from blogapi.errors import ProblemType

API = "/api/v1"


async def test_a_bad_cursor_a_reused_key_and_a_stale_if_match_are_told_apart_by_type(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    bad_cursor = await client.get(f"{API}/posts", params={"cursor": "not-a-cursor"})
    keyed = ann.headers | {"Idempotency-Key": "one-key"}
    created = await client.post(f"{API}/posts", json={"title": "One"}, headers=keyed)
    assert created.status_code == 201, created.text
    reused_key = await client.post(f"{API}/posts", json={"title": "Two"}, headers=keyed)
    stale = await client.patch(
        f"{API}/posts/{created.json()['id']}",
        json={"title": "Three"},
        headers=ann.headers | {"If-Match": '"99"'},
    )
    types = [
        assert_problem(bad_cursor, 422)["type"],
        assert_problem(reused_key, 422)["type"],
        assert_problem(stale, 412)["type"],
    ]
    assert types == [
        ProblemType.INVALID_CURSOR,
        ProblemType.IDEMPOTENCY_KEY_REUSED,
        ProblemType.PRECONDITION_FAILED,
    ]


async def test_each_kind_of_client_error_has_its_own_type(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann, bob = await accounts.create(), await accounts.create()
    post = await client.post(f"{API}/posts", json={"title": "Ann's"}, headers=ann.headers)
    answers = {
        ProblemType.VALIDATION_ERROR: (await client.post(f"{API}/posts", json={}, headers=ann.headers), 422),
        ProblemType.UNAUTHORIZED: (await client.get(f"{API}/users/me"), 401),
        ProblemType.INVALID_CREDENTIALS: (
            await client.post(
                f"{API}/auth/token", data={"username": ann.email, "password": "wrong password"}
            ),
            401,
        ),
        ProblemType.FORBIDDEN: (
            await client.patch(
                f"{API}/posts/{post.json()['id']}", json={"title": "Bob's"}, headers=bob.headers
            ),
            403,
        ),
        ProblemType.NOT_FOUND: (await client.get(f"{API}/posts/999999"), 404),
        ProblemType.METHOD_NOT_ALLOWED: (await client.put(f"{API}/posts"), 405),
        ProblemType.EMAIL_TAKEN: (
            await client.post(
                f"{API}/users", json={"name": "Twin", "email": ann.email, "password": PASSWORD}
            ),
            409,
        ),
    }
    for problem_type, (response, status) in answers.items():
        assert assert_problem(response, status)["type"] == problem_type
    unauthorized = answers[ProblemType.UNAUTHORIZED][0]
    assert unauthorized.headers["www-authenticate"] == "Bearer"


async def test_an_invalid_email_is_explained_in_words(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/users", json={"name": "Ada", "email": "ada.example.com", "password": PASSWORD}
    )
    (error,) = assert_problem(response, 422)["errors"]
    assert error["loc"] == ["body", "email"]
    assert error["msg"].startswith("not a valid email address")


async def test_no_validation_message_quotes_a_regular_expression(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    control = "a\x01b"
    responses = [
        await client.post(f"{API}/users", json={"name": control, "email": "a@b", "password": PASSWORD}),
        await client.post(
            f"{API}/posts",
            json={"title": control, "body": "\x00", "tags": ["no spaces"]},
            headers=ann.headers,
        ),
        await client.get(f"{API}/posts", params={"q": control, "tag": "a b"}),
        await client.get(f"{API}/users", params={"q": control}),
        await client.post(
            f"{API}/posts", json={"title": "Keyed"}, headers=ann.headers | {"Idempotency-Key": "with space"}
        ),
    ]
    messages = [error["msg"] for response in responses for error in assert_problem(response, 422)["errors"]]
    assert len(messages) >= 9, messages
    for message in messages:
        assert "pattern" not in message, message
        assert not {"^", "$", "\\", "[", "]"} & set(message), message
