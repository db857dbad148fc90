"""Email verification (issue 11, "Email: reset and verification"): sign-up and email changes
mail a token, over SMTP to a server in the test process; REQUIRE_VERIFIED_EMAIL holds back
publishing and email changes until an address is proven."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from conftest import PASSWORD, Account, Accounts, assert_problem
from mail_support import Inbox, smtp_server
from pydantic import SecretStr
from sqlalchemy import update

from blogapi.auth.models import MailToken
from blogapi.config import Settings
from blogapi.db import Database, utcnow

VERIFY = "/api/v1/auth/verify"
RESEND = "/api/v1/auth/verify/resend"
ME = "/api/v1/users/me"
POSTS = "/api/v1/posts"
PROBLEMS = "https://blogapi.dev/problems/"
INVALID_VERIFICATION_TOKEN = PROBLEMS + "invalid-verification-token"
EMAIL_NOT_VERIFIED = PROBLEMS + "email-not-verified"
CONFIRM_SUBJECT = "Confirm your email address"
NOTICE_SUBJECT = "Your blogapi email address is changing"
REQUIRED = [{"require_verified_email": True}]


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
    overrides = {"smtp_url": SecretStr(f"smtp://127.0.0.1:{smtp[1]}"), **getattr(request, "param", {})}
    return settings.model_copy(update=overrides)


async def me(client: httpx.AsyncClient, account: Account) -> dict[str, object]:
    response = await client.get(ME, headers=account.headers)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def change_email(client: httpx.AsyncClient, account: Account, email: str) -> httpx.Response:
    return await client.patch(f"/api/v1/users/{account.id}", json={"email": email}, headers=account.headers)


async def test_a_sign_up_mails_a_token_that_verifies_the_address(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    assert (await me(client, account))["email_verified"] is False

    token = inbox.token(account.email, CONFIRM_SUBJECT)
    verified = await client.post(VERIFY, json={"token": token})
    assert verified.status_code == 204, verified.text
    assert (await me(client, account))["email_verified"] is True


async def test_email_verified_is_shown_to_its_owner_and_admins_only(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.create()
    other = await accounts.create()
    admin = await accounts.create(admin=True)
    path = f"/api/v1/users/{owner.id}"
    assert (await client.get(path, headers=owner.headers)).json()["email_verified"] is False
    assert (await client.get(path, headers=admin.headers)).json()["email_verified"] is False
    assert (await client.get(path, headers=other.headers)).json()["email_verified"] is None
    assert (await client.get(path)).json()["email_verified"] is None


async def test_a_verification_token_works_once(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    token = inbox.token(account.email, CONFIRM_SUBJECT)
    assert (await client.post(VERIFY, json={"token": token})).status_code == 204
    again = await client.post(VERIFY, json={"token": token})
    assert assert_problem(again, 400)["type"] == INVALID_VERIFICATION_TOKEN


async def test_an_unknown_verification_token_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(VERIFY, json={"token": "no-such-token"})
    assert assert_problem(response, 400)["type"] == INVALID_VERIFICATION_TOKEN


async def test_an_expired_verification_token_is_refused(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox, database: Database
) -> None:
    account = await accounts.create()
    token = inbox.token(account.email, CONFIRM_SUBJECT)
    async with database.engine.begin() as connection:
        await connection.execute(update(MailToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    response = await client.post(VERIFY, json={"token": token})
    assert assert_problem(response, 400)["type"] == INVALID_VERIFICATION_TOKEN
    assert (await me(client, account))["email_verified"] is False


async def test_an_email_change_takes_effect_at_once_unverified_and_tells_the_old_address(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    signup_token = inbox.token(account.email, CONFIRM_SUBJECT)
    assert (await client.post(VERIFY, json={"token": signup_token})).status_code == 204

    changed = await change_email(client, account, "new.address@example.com")
    assert changed.status_code == 200, changed.text
    assert changed.json()["email"] == "new.address@example.com"
    assert changed.json()["email_verified"] is False
    notice = [mail for mail in inbox.to(account.email) if mail["Subject"] == NOTICE_SUBJECT]
    assert len(notice) == 1
    assert "new.address@example.com" in notice[0].get_content()

    token = inbox.token("new.address@example.com", CONFIRM_SUBJECT)
    assert (await client.post(VERIFY, json={"token": token})).status_code == 204
    assert (await me(client, account))["email_verified"] is True


async def test_a_token_for_an_address_the_account_no_longer_has_is_refused(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    first = "first.change@example.com"
    assert (await change_email(client, account, first)).status_code == 200
    stale = inbox.token(first, CONFIRM_SUBJECT)
    assert (await change_email(client, account, "second.change@example.com")).status_code == 200

    response = await client.post(VERIFY, json={"token": stale})
    assert assert_problem(response, 400)["type"] == INVALID_VERIFICATION_TOKEN
    assert (await me(client, account))["email"] == "second.change@example.com"


async def test_a_new_verification_mail_can_be_asked_for_and_replaces_the_old_token(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    old = inbox.token(account.email, CONFIRM_SUBJECT)
    resent = await client.post(RESEND, headers=account.headers)
    assert resent.status_code == 202, resent.text
    new = inbox.token(account.email, CONFIRM_SUBJECT)
    assert new != old
    assert (
        assert_problem(await client.post(VERIFY, json={"token": old}), 400)["type"]
        == INVALID_VERIFICATION_TOKEN
    )
    assert (await client.post(VERIFY, json={"token": new})).status_code == 204


@pytest.mark.parametrize("settings", [{"password_resets_per_account": 1}], indirect=True)
async def test_asking_for_verification_mails_is_throttled_per_account(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()
    assert (await client.post(RESEND, headers=account.headers)).status_code == 202
    refused = await client.post(RESEND, headers=account.headers)
    assert_problem(refused, 429)
    assert int(refused.headers["Retry-After"]) >= 1


async def test_asking_for_a_verification_mail_needs_a_login(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post(RESEND), 401)


async def test_a_verified_address_is_mailed_nothing_more(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    assert (
        await client.post(VERIFY, json={"token": inbox.token(account.email, CONFIRM_SUBJECT)})
    ).status_code == 204
    before = len(inbox.to(account.email))
    assert (await client.post(RESEND, headers=account.headers)).status_code == 202
    assert len(inbox.to(account.email)) == before


async def test_without_the_requirement_an_unverified_account_publishes(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()
    response = await client.post(POSTS, json={"title": "Hello", "body": "text"}, headers=account.headers)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("settings", REQUIRED, indirect=True)
async def test_with_the_requirement_an_unverified_account_cannot_publish_until_verified(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    refused = await client.post(POSTS, json={"title": "Hello", "body": "text"}, headers=account.headers)
    assert assert_problem(refused, 403)["type"] == EMAIL_NOT_VERIFIED

    assert (
        await client.post(VERIFY, json={"token": inbox.token(account.email, CONFIRM_SUBJECT)})
    ).status_code == 204
    published = await client.post(POSTS, json={"title": "Hello", "body": "text"}, headers=account.headers)
    assert published.status_code == 201, published.text


@pytest.mark.parametrize("settings", REQUIRED, indirect=True)
async def test_with_the_requirement_an_email_change_waits_for_the_new_address(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    assert (
        await client.post(VERIFY, json={"token": inbox.token(account.email, CONFIRM_SUBJECT)})
    ).status_code == 204

    changed = await change_email(client, account, "pending@example.com")
    assert changed.status_code == 200, changed.text
    assert changed.json()["email"] == account.email
    assert changed.json()["email_verified"] is True
    assert [mail for mail in inbox.to(account.email) if mail["Subject"] == NOTICE_SUBJECT]

    token = inbox.token("pending@example.com", CONFIRM_SUBJECT)
    assert (await client.post(VERIFY, json={"token": token})).status_code == 204
    now = await me(client, account)
    assert now["email"] == "pending@example.com"
    assert now["email_verified"] is True
    logged_in = await client.post(
        "/api/v1/auth/token", data={"username": "pending@example.com", "password": PASSWORD}
    )
    assert logged_in.status_code == 200


@pytest.mark.parametrize("settings", REQUIRED, indirect=True)
async def test_a_pending_address_taken_meanwhile_is_a_conflict_at_verification(
    client: httpx.AsyncClient, accounts: Accounts, inbox: Inbox
) -> None:
    account = await accounts.create()
    taker = await accounts.create()
    assert (await change_email(client, account, "wanted@example.com")).status_code == 200
    token = inbox.token("wanted@example.com", CONFIRM_SUBJECT)
    assert (await change_email(client, taker, "wanted@example.com")).status_code == 200
    assert (
        await client.post(VERIFY, json={"token": inbox.token("wanted@example.com", CONFIRM_SUBJECT)})
    ).status_code == 204

    response = await client.post(VERIFY, json={"token": token})
    assert assert_problem(response, 409)["type"] == PROBLEMS + "email-taken"
    assert (await me(client, account))["email"] == account.email


async def test_a_replayed_sign_up_sends_no_second_mail(client: httpx.AsyncClient, inbox: Inbox) -> None:
    body = {"name": "Once", "email": "once@example.com", "password": PASSWORD}
    headers = {"Idempotency-Key": "sign-up-once"}
    first = await client.post("/api/v1/users", json=body, headers=headers)
    replay = await client.post("/api/v1/users", json=body, headers=headers)
    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert len(inbox.to("once@example.com")) == 1
