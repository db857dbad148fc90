"""Login throttling per account and per client address, kept in the database; constant-cost logins."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from http import HTTPStatus
from typing import Any

import httpx
import pytest
from conftest import PASSWORD, Accounts
from pwdlib import PasswordHash
from sqlalchemy import select, update

from blogapi.auth import security
from blogapi.auth.models import LoginFailures
from blogapi.config import Settings
from blogapi.db import Database, utcnow

TOKEN = "/api/v1/auth/token"
PROBLEM = "application/problem+json"
WRONG = "not the password"


@pytest.fixture
def setting_overrides() -> dict[str, Any]:
    """Settings a test changes; parametrize this fixture by name to change them."""
    return {}


@pytest.fixture
def settings(settings: Settings, setting_overrides: dict[str, Any]) -> Settings:
    # `database`, `client` and `accounts` all take `settings`: they see these values.
    return settings.model_copy(update=setting_overrides)


def overrides(**values: int) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("setting_overrides", [values], ids=["overrides"])


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post(TOKEN, data={"username": email, "password": password})


async def fail(client: httpx.AsyncClient, email: str, times: int) -> None:
    for _ in range(times):
        response = await login(client, email, WRONG)
        assert response.status_code == 401, response.text


def assert_throttled(response: httpx.Response, window: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == 429
    assert problem["title"] == HTTPStatus.TOO_MANY_REQUESTS.phrase
    assert problem["detail"]
    assert "access_token" not in problem
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= window


async def failure_counts(database: Database) -> dict[str, int]:
    async with database.sessionmaker() as session:
        rows = await session.execute(select(LoginFailures.bucket, LoginFailures.failures))
    return {bucket: failures for bucket, failures in rows}


def address_count(counts: dict[str, int]) -> int:
    (count,) = (value for bucket, value in counts.items() if bucket.startswith("address:"))
    return count


# --- per account -----------------------------------------------------------------------------------


async def test_an_account_is_locked_after_its_failure_limit_even_for_the_right_password(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    limit = settings.login_failures_per_account
    await fail(client, ann.email, limit)
    assert_throttled(await login(client, ann.email), settings.login_failure_window_seconds)
    assert_throttled(await login(client, ann.email, WRONG), settings.login_failure_window_seconds)


async def test_one_failure_short_of_the_limit_still_logs_in(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    await fail(client, ann.email, settings.login_failures_per_account - 1)
    assert (await login(client, ann.email)).status_code == 200


async def test_a_locked_account_does_not_lock_another_account_on_the_same_client(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann, bob = await accounts.create(), await accounts.create()
    await fail(client, ann.email, settings.login_failures_per_account)
    assert_throttled(await login(client, ann.email), settings.login_failure_window_seconds)
    response = await login(client, bob.email)
    assert response.status_code == 200, response.text
    assert response.json()["access_token"]


async def test_the_account_limit_ignores_the_case_of_the_email(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    limit = settings.login_failures_per_account
    await fail(client, ann.email.upper(), limit // 2)
    await fail(client, ann.email, limit - limit // 2)
    assert_throttled(await login(client, ann.email), settings.login_failure_window_seconds)


async def test_a_successful_login_clears_the_accounts_failures(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings, database: Database
) -> None:
    ann = await accounts.create()
    almost = settings.login_failures_per_account - 1
    await fail(client, ann.email, almost)
    assert (await login(client, ann.email)).status_code == 200
    assert f"account:{ann.email}" not in await failure_counts(database)
    await fail(client, ann.email, almost)
    assert (await login(client, ann.email)).status_code == 200


async def test_failures_are_stored_in_the_database_per_account_and_per_address(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    await fail(client, ann.email, 3)
    await fail(client, "nobody@example.com", 2)
    counts = await failure_counts(database)
    assert counts[f"account:{ann.email}"] == 3
    assert counts["account:nobody@example.com"] == 2
    assert address_count(counts) == 5


async def test_after_the_window_an_account_may_log_in_again_and_counts_restart(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings, database: Database
) -> None:
    ann = await accounts.create()
    window = settings.login_failure_window_seconds
    await fail(client, ann.email, settings.login_failures_per_account)
    assert_throttled(await login(client, ann.email), window)
    async with database.sessionmaker.begin() as session:
        await session.execute(
            update(LoginFailures).values(window_start=utcnow() - timedelta(seconds=window + 1))
        )
    response = await login(client, ann.email, WRONG)
    assert response.status_code == 401, response.text
    # A new window began with this failure: the old ones no longer count.
    assert (await failure_counts(database))[f"account:{ann.email}"] == 1
    assert (await login(client, ann.email)).status_code == 200


async def test_a_window_not_yet_over_still_throttles(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings, database: Database
) -> None:
    ann = await accounts.create()
    window = settings.login_failure_window_seconds
    await fail(client, ann.email, settings.login_failures_per_account)
    async with database.sessionmaker.begin() as session:
        await session.execute(
            update(LoginFailures).values(window_start=utcnow() - timedelta(seconds=window - 60))
        )
    response = await login(client, ann.email)
    assert_throttled(response, window)
    assert int(response.headers["retry-after"]) <= 61


# --- per address -----------------------------------------------------------------------------------


@overrides(login_failures_per_address=3, login_failures_per_account=100)
async def test_failures_across_accounts_lock_the_client_address(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    people = [await accounts.create() for _ in range(4)]
    for person in people[:3]:
        await fail(client, person.email, 1)
    assert_throttled(await login(client, people[3].email), settings.login_failure_window_seconds)
    assert_throttled(await login(client, people[0].email), settings.login_failure_window_seconds)


@overrides(login_failures_per_address=3, login_failures_per_account=100)
async def test_failures_for_unknown_emails_count_against_the_address(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings, database: Database
) -> None:
    ann = await accounts.create()
    for n in range(3):
        await fail(client, f"nobody{n}@example.com", 1)
    assert address_count(await failure_counts(database)) == 3
    assert_throttled(await login(client, ann.email), settings.login_failure_window_seconds)


@overrides(login_failures_per_address=3, login_failures_per_account=100)
async def test_a_successful_login_does_not_clear_the_address_failures(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann, bob = await accounts.create(), await accounts.create()
    await fail(client, ann.email, 2)
    assert (await login(client, ann.email)).status_code == 200
    await fail(client, bob.email, 1)
    assert_throttled(await login(client, bob.email), settings.login_failure_window_seconds)


# --- concurrency -----------------------------------------------------------------------------------


@overrides(login_failures_per_address=1000, login_failures_per_account=1000)
async def test_concurrent_failures_are_all_counted(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()
    responses = await asyncio.gather(*(login(client, ann.email, WRONG) for _ in range(20)))
    assert [response.status_code for response in responses] == [401] * 20, [
        response.text for response in responses if response.status_code != 401
    ]
    counts = await failure_counts(database)
    assert counts[f"account:{ann.email}"] == 20
    assert address_count(counts) == 20


async def test_concurrent_failures_past_the_limit_are_refused_without_server_errors(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    limit = settings.login_failures_per_account
    responses = await asyncio.gather(*(login(client, ann.email, WRONG) for _ in range(2 * limit)))
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {401, 429}, [response.text for response in responses]
    assert_throttled(await login(client, ann.email), settings.login_failure_window_seconds)


# --- constant cost ---------------------------------------------------------------------------------


class CountingHasher:
    """Delegates to a real PasswordHash, recording each verify call."""

    def __init__(self, real: PasswordHash) -> None:
        self.real = real
        self.verified: list[str | bytes] = []

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        return self.real.hash(password, salt=salt)

    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        self.verified.append(hash)
        return self.real.verify(password, hash)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_an_unknown_email_costs_one_password_verification_like_a_wrong_password(
    client: httpx.AsyncClient, accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann = await accounts.create()
    hasher = CountingHasher(security._password_hash)
    monkeypatch.setattr(security, "_password_hash", hasher)
    security._dummy_hash.cache_clear()

    response = await login(client, ann.email, WRONG)
    assert response.status_code == 401, response.text
    assert len(hasher.verified) == 1

    hasher.verified.clear()
    response = await login(client, "nobody@example.com", WRONG)
    assert response.status_code == 401, response.text
    assert len(hasher.verified) == 1
    # A real hash of the same scheme, not a shortcut that fails at once.
    (dummy,) = hasher.verified
    assert isinstance(dummy, str)
    assert dummy.startswith("$argon2id$")

    hasher.verified.clear()
    assert (await login(client, ann.email)).status_code == 200
    assert len(hasher.verified) == 1
