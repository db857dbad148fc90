"""Password reset by mail (issue 11, "Email: reset and verification"): real mail over SMTP to
a server in the test process, tokens read from the received text as a user reads them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from conftest import PASSWORD, Accounts, assert_problem
from mail_support import Inbox, free_port, smtp_server
from pydantic import SecretStr
from sqlalchemy import select, update

from blogapi.auth.models import MailToken
from blogapi.config import Settings
from blogapi.db import Database, utcnow

RESET = "/api/v1/auth/password-reset"
CONFIRM = "/api/v1/auth/password-reset/confirm"
TOKEN = "/api/v1/auth/token"
ME = "/api/v1/users/me"
INVALID_RESET_TOKEN = "https://blogapi.dev/problems/invalid-reset-token"
SUBJECT = "Reset your blogapi password"
NEW_PASSWORD = "a brand new horse"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    with smtp_server() as running:
        yield running


@pytest.fixture
def inbox(smtp: tuple[Inbox, int]) -> Inbox:
    return smtp[0]


@pytest.fixture
def settings(settings: Settings, smtp: tuple[Inbox, int], request: pytest.FixtureRequest) -> Settings:
    """The test settings, sending mail to the test's SMTP server (and any `param` overrides)."""
    overrides = {
        "smtp_url": SecretStr(f"smtp://127.0.0.1:{smtp[1]}"),
        "password_resets_per_account": 2,
        **getattr(request, "param", {}),
    }
    return settings.model_copy(update=overrides)


async def log_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(TOKEN, data={"username": email, "password": password})


async def test_a_reset_mail_holds_a_token_that_sets_the_password_and_ends_every_session(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    other_session = await accounts.login(account.email)

    response = await client.post(RESET, json={"email": account.email.upper()})
    assert response.status_code == 202, response.text
    token = inbox.token(account.email, SUBJECT)

    confirmed = await client.post(CONFIRM, json={"token": token, "new_password": NEW_PASSWORD})
    assert confirmed.status_code == 204, confirmed.text
    for access_token in (account.token, other_session):
        refused = await client.get(ME, headers={"Authorization": f"Bearer {access_token}"})
        assert_problem(refused, 401)
    assert (await log_in(client, account.email, PASSWORD)).status_code == 401
    logged_in = await log_in(client, account.email, NEW_PASSWORD)
    assert logged_in.status_code == 200, logged_in.text
    # The mail reached the address, so it is verified too.
    me = await client.get(ME, headers={"Authorization": f"Bearer {logged_in.json()['access_token']}"})
    assert me.json()["email_verified"] is True


async def test_only_the_hash_of_a_reset_token_is_stored(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox, database: Database
) -> None:
    account = await accounts.create()
    await client.post(RESET, json={"email": account.email})
    token = inbox.token(account.email, SUBJECT)
    async with database.engine.connect() as connection:
        stored = list(await connection.scalars(select(MailToken.token_hash)))
    assert stored
    assert token not in stored


async def test_the_answer_is_the_same_whether_or_not_an_account_has_the_email(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    known = await client.post(RESET, json={"email": account.email})
    unknown = await client.post(RESET, json={"email": "nobody@example.com"})

    def without_request_id(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "x-request-id"]
        return response.status_code, headers, response.content

    assert without_request_id(known) == without_request_id(unknown)
    assert known.status_code == 202
    assert len(inbox.to(account.email)) == 2  # sign-up verification and the reset
    assert inbox.to("nobody@example.com") == []


async def test_a_used_token_is_refused_with_its_problem_type(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    await client.post(RESET, json={"email": account.email})
    token = inbox.token(account.email, SUBJECT)
    assert (
        await client.post(CONFIRM, json={"token": token, "new_password": NEW_PASSWORD})
    ).status_code == 204

    again = await client.post(CONFIRM, json={"token": token, "new_password": "yet another one"})
    assert assert_problem(again, 400)["type"] == INVALID_RESET_TOKEN
    assert (await log_in(client, account.email, NEW_PASSWORD)).status_code == 200


async def test_an_unknown_token_is_refused_with_its_problem_type(client: httpx.AsyncClient) -> None:
    response = await client.post(CONFIRM, json={"token": "made-up", "new_password": NEW_PASSWORD})
    assert assert_problem(response, 400)["type"] == INVALID_RESET_TOKEN


async def test_an_expired_token_is_refused_with_its_problem_type(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox, database: Database, settings: Settings
) -> None:
    account = await accounts.create()
    await client.post(RESET, json={"email": account.email})
    token = inbox.token(account.email, SUBJECT)
    async with database.engine.begin() as connection:
        reset = MailToken.purpose == "reset"
        row = (
            await connection.execute(select(MailToken.created_at, MailToken.expires_at).where(reset))
        ).one()
        # It was issued for PASSWORD_RESET_MINUTES.
        assert row.expires_at - row.created_at == timedelta(minutes=settings.password_reset_minutes)
        await connection.execute(
            update(MailToken).where(reset).values(expires_at=utcnow() - timedelta(seconds=1))
        )

    response = await client.post(CONFIRM, json={"token": token, "new_password": NEW_PASSWORD})
    assert assert_problem(response, 400)["type"] == INVALID_RESET_TOKEN
    assert (await log_in(client, account.email, PASSWORD)).status_code == 200


async def test_a_token_mailed_before_an_email_change_no_longer_works(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    await client.post(RESET, json={"email": account.email})
    token = inbox.token(account.email, SUBJECT)
    changed = await client.patch(
        f"/api/v1/users/{account.id}", json={"email": "elsewhere@example.com"}, headers=account.headers
    )
    assert changed.status_code == 200, changed.text

    response = await client.post(CONFIRM, json={"token": token, "new_password": NEW_PASSWORD})
    assert assert_problem(response, 400)["type"] == INVALID_RESET_TOKEN


async def test_of_two_confirms_of_one_token_at_once_exactly_one_succeeds(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    await client.post(RESET, json={"email": account.email})
    token = inbox.token(account.email, SUBJECT)

    first, second = await asyncio.gather(
        client.post(CONFIRM, json={"token": token, "new_password": "first new password"}),
        client.post(CONFIRM, json={"token": token, "new_password": "second new password"}),
    )
    statuses = sorted([first.status_code, second.status_code])
    assert statuses == [204, 400], (first.text, second.text)
    loser = first if first.status_code == 400 else second
    assert assert_problem(loser, 400)["type"] == INVALID_RESET_TOKEN
    winner = "first new password" if first.status_code == 204 else "second new password"
    assert (await log_in(client, account.email, winner)).status_code == 200


async def test_a_newer_reset_mail_replaces_the_earlier_token(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    await client.post(RESET, json={"email": account.email})
    earlier = inbox.token(account.email, SUBJECT)
    await client.post(RESET, json={"email": account.email})
    later = inbox.token(account.email, SUBJECT)
    assert earlier != later

    response = await client.post(CONFIRM, json={"token": earlier, "new_password": NEW_PASSWORD})
    assert assert_problem(response, 400)["type"] == INVALID_RESET_TOKEN
    assert (
        await client.post(CONFIRM, json={"token": later, "new_password": NEW_PASSWORD})
    ).status_code == 204


async def test_past_the_limit_for_an_email_requests_are_answered_alike_but_send_nothing(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox, settings: Settings
) -> None:
    account = await accounts.create()
    answers = [await client.post(RESET, json={"email": account.email}) for _ in range(4)]
    assert {answer.status_code for answer in answers} == {202}
    assert len({answer.content for answer in answers}) == 1
    resets = [mail for mail in inbox.to(account.email) if mail["Subject"] == SUBJECT]
    assert len(resets) == settings.password_resets_per_account


async def test_a_disabled_account_is_sent_no_reset_mail(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    admin = await accounts.create(admin=True)
    account = await accounts.create()
    disabled = await client.patch(
        f"/api/v1/users/{account.id}", json={"is_active": False}, headers=admin.headers
    )
    assert disabled.status_code == 200, disabled.text

    assert (await client.post(RESET, json={"email": account.email})).status_code == 202
    assert [mail for mail in inbox.to(account.email) if mail["Subject"] == SUBJECT] == []


async def test_an_invalid_email_is_a_validation_error(client: httpx.AsyncClient) -> None:
    response = await client.post(RESET, json={"email": "not an email"})
    assert_problem(response, 422)


async def test_a_too_short_new_password_is_a_validation_error(client: httpx.AsyncClient) -> None:
    response = await client.post(CONFIRM, json={"token": "whatever", "new_password": "short"})
    assert_problem(response, 422)


@pytest.mark.parametrize("settings", [{"password_resets_per_address": 2}], indirect=True)
async def test_past_the_limit_for_an_address_requests_are_refused_with_retry_after(
    client: httpx.AsyncClient, inbox: Inbox
) -> None:
    for number in range(2):
        assert (await client.post(RESET, json={"email": f"x{number}@example.com"})).status_code == 202
    refused = await client.post(RESET, json={"email": "x9@example.com"})
    assert_problem(refused, 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert inbox.messages == []


@pytest.mark.parametrize(
    "settings", [{"smtp_url": SecretStr(f"smtp://127.0.0.1:{free_port()}")}], indirect=True
)
async def test_an_unreachable_mail_server_changes_no_answer_and_is_logged(
    client: httpx.AsyncClient, accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    account = await accounts.create()
    with caplog.at_level(logging.ERROR, logger="blogapi.mail"):
        known = await client.post(RESET, json={"email": account.email})
        unknown = await client.post(RESET, json={"email": "nobody@example.com"})
    assert (known.status_code, known.content) == (unknown.status_code, unknown.content)
    assert known.status_code == 202
    assert "mail not sent" in caplog.text
