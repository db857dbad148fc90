"""Login throttling per account and per client address, kept in the database; constant-cost logins."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import PASSWORD, TEST_SECRET, Accounts, database_env
from pwdlib import PasswordHash
from sqlalchemy import func, select, update

from blogapi.auth import security, throttle
from blogapi.auth.models import LoginFailures
from blogapi.config import Settings
from blogapi.db import Database, utcnow
from blogapi.users import service as users_service
from blogapi.users.schemas import UserCreate

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


@overrides(
    login_failures_per_address=1000,
    login_failures_per_account=1000,
    login_failures_per_account_and_address=1000,
)
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
    assert counts[f"account-address:{ann.email} 127.0.0.1"] == 20
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


# --- attempts are reserved before the hash ---------------------------------------------------------


async def test_concurrent_wrong_passwords_let_at_most_the_limit_through_to_the_hash(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann = await accounts.create()
    hasher = CountingHasher(security._password_hash)
    monkeypatch.setattr(security, "_password_hash", hasher)
    limit = settings.login_failures_per_account_and_address
    responses = await asyncio.gather(*(login(client, ann.email, WRONG) for _ in range(4 * limit)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [401] * limit + [429] * (3 * limit), [response.text for response in responses]
    assert len(hasher.verified) == limit
    assert_throttled(await login(client, ann.email), settings.login_failure_window_seconds)


@overrides(login_failures_per_address=5, login_failures_per_account=100)
async def test_concurrent_wrong_passwords_for_many_accounts_let_at_most_the_address_limit_through(
    client: httpx.AsyncClient, accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    hasher = CountingHasher(security._password_hash)
    monkeypatch.setattr(security, "_password_hash", hasher)
    responses = await asyncio.gather(*(login(client, f"nobody{n}@example.com", WRONG) for n in range(20)))
    assert sorted(response.status_code for response in responses) == [401] * 5 + [429] * 15
    assert len(hasher.verified) == 5


# --- strangers slow an account down, they do not lock its owner out -------------------------------


def client_at(app: Any, address: str) -> httpx.AsyncClient:
    """A client of the running app that connects from `address`."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_the_owner_still_logs_in_from_another_address_after_strangers_reach_the_account_limit(
    app_and_client: tuple[Any, httpx.AsyncClient], accounts: Accounts, settings: Settings
) -> None:
    app, client = app_and_client
    ann = await accounts.create()
    await fail(client, ann.email, settings.login_failures_per_account)
    # The address that guessed is locked out of this account...
    assert_throttled(await login(client, ann.email), settings.login_failure_window_seconds)
    # ... but the owner, elsewhere, is not.
    async with client_at(app, "198.51.100.7") as owner:
        response = await login(owner, ann.email)
    assert response.status_code == 200, response.text
    assert response.json()["access_token"]


@overrides(login_slowdown_seconds=30)
async def test_past_the_account_limit_the_account_takes_one_attempt_per_slowdown_interval(
    app_and_client: tuple[Any, httpx.AsyncClient], accounts: Accounts, settings: Settings, database: Database
) -> None:
    app, client = app_and_client
    ann = await accounts.create()
    await fail(client, ann.email, settings.login_failures_per_account)
    async with client_at(app, "198.51.100.7") as stranger, client_at(app, "198.51.100.8") as owner:
        assert (await login(stranger, ann.email, WRONG)).status_code == 401  # the interval's one attempt
        assert_throttled(await login(stranger, ann.email, WRONG), settings.login_slowdown_seconds)
        assert_throttled(await login(owner, ann.email), settings.login_slowdown_seconds)
        async with database.sessionmaker.begin() as session:
            await session.execute(
                update(LoginFailures)
                .where(LoginFailures.bucket == f"slowdown:{ann.email}")
                .values(window_start=utcnow() - timedelta(seconds=settings.login_slowdown_seconds))
            )
        response = await login(owner, ann.email)
    assert response.status_code == 200, response.text


async def test_a_successful_login_releases_its_attempt_at_the_address(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()  # logs in once
    await fail(client, ann.email, 2)
    assert (await login(client, ann.email)).status_code == 200
    assert address_count(await failure_counts(database)) == 2


# --- sign-ups per address --------------------------------------------------------------------------


def sign_up(client: httpx.AsyncClient, email: str) -> Any:
    return client.post("/api/v1/users", json={"name": "Someone", "email": email, "password": PASSWORD})


@overrides(signups_per_address=3)
async def test_sign_ups_past_the_address_limit_are_429_before_any_password_is_hashed(
    app_and_client: tuple[Any, httpx.AsyncClient], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client = app_and_client
    for n in range(3):
        response = await sign_up(client, f"signup{n}@example.com")
        assert response.status_code == 201, response.text
    hashed: list[str] = []
    real_hash = security.hash_password

    async def counting_hash(password: str, *, concurrency: int) -> str:
        hashed.append(password)
        return await real_hash(password, concurrency=concurrency)

    monkeypatch.setattr("blogapi.users.service.hash_password", counting_hash)
    responses = await asyncio.gather(*(sign_up(client, f"more{n}@example.com") for n in range(5)))
    for response in responses:
        assert_throttled(response, settings.signup_window_seconds)
    assert hashed == []
    async with client_at(app, "198.51.100.7") as elsewhere:
        response = await sign_up(elsewhere, "elsewhere@example.com")
    assert response.status_code == 201, response.text


# --- expired rows are pruned -----------------------------------------------------------------------


async def test_expired_throttle_rows_are_pruned_so_the_table_stays_bounded(
    client: httpx.AsyncClient, settings: Settings, database: Database
) -> None:
    long_ago = utcnow() - throttle.longest_window(settings) - timedelta(seconds=1)
    expired = 20 * throttle.PRUNE_BATCH
    async with database.sessionmaker.begin() as session:
        session.add_all(
            LoginFailures(bucket=f"account:old{n}@example.com", failures=3, window_start=long_ago)
            for n in range(expired)
        )
    logins = 40
    for n in range(logins):
        response = await login(client, f"new{n}@example.com", WRONG)
        assert response.status_code == 401, response.text
    # However many expired rows there were, what is left are the live ones: the address's,
    # and each new email's two.
    counts = await failure_counts(database)
    assert not [bucket for bucket in counts if bucket.startswith("account:old")]
    assert len(counts) == 1 + 2 * logins


async def row_count(database: Database) -> int:
    async with database.sessionmaker() as session:
        count = await session.scalar(select(func.count()).select_from(LoginFailures))
    assert count is not None
    return count


async def test_unlock_forgets_an_accounts_failures_from_every_address_and_nothing_else(
    app_and_client: tuple[Any, httpx.AsyncClient], accounts: Accounts, settings: Settings, database: Database
) -> None:
    app, client = app_and_client
    ann, bob = await accounts.create(), await accounts.create()
    await fail(client, ann.email, settings.login_failures_per_account)
    await fail(client, bob.email, 1)
    async with client_at(app, "198.51.100.7") as elsewhere:
        await fail(elsewhere, ann.email, 1)  # the slow-down interval's attempt
    async with database.engine.begin() as connection:
        deleted = await throttle.unlock(connection, ann.email.upper())
    assert deleted == 4  # account, slowdown, and one per address
    counts = await failure_counts(database)
    assert not [bucket for bucket in counts if ann.email in bucket]
    assert counts[f"account:{bob.email}"] == 1
    assert counts["address:127.0.0.1"] == settings.login_failures_per_account + 1
    assert (await login(client, ann.email)).status_code == 200


# --- two processes on one database -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serving(database_url: str, directory: Path) -> AsyncIterator[str]:
    """uvicorn serving blogapi on `database_url` (already migrated) until the block ends; its URL."""
    port = free_port()
    log = directory / f"server-{port}.log"
    env = os.environ | database_env(database_url) | {"SECRET_KEY": TEST_SECRET, "ENVIRONMENT": "test"}
    argv = [sys.executable, "-m", "uvicorn", "blogapi.asgi:app", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as output:
        process = await asyncio.to_thread(
            subprocess.Popen,
            argv,
            cwd=directory,  # no stray .env file from the working tree
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as probe:
            for _ in range(240):
                assert process.poll() is None, log.read_text()[-3000:]
                with contextlib.suppress(httpx.TransportError):
                    if (await probe.get("/health/ready")).status_code == 200:
                        break
                await asyncio.sleep(0.25)
            else:
                pytest.fail(f"the server never became ready:\n{log.read_text()[-3000:]}")
        yield base_url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)


async def test_two_processes_on_one_database_let_at_most_the_limit_of_wrong_passwords_through(
    database_url: str, database: Database, settings: Settings, tmp_path: Path
) -> None:
    """29 wrong passwords split across two processes, then the right one: 429, not a token."""
    async with database.sessionmaker.begin() as session:
        # Hashed here at test cost: the servers verify with the parameters in the hash.
        await users_service.create_user(
            session, UserCreate(name="Ann", email="ann@example.com", password=PASSWORD), settings
        )
    limit = settings.login_failures_per_account_and_address
    async with (
        serving(database_url, tmp_path) as first,
        serving(database_url, tmp_path) as second,
        httpx.AsyncClient(timeout=60) as client,
    ):
        bases = ([first, second] * 15)[:29]
        responses = await asyncio.gather(
            *(
                client.post(f"{base}{TOKEN}", data={"username": "ann@example.com", "password": WRONG})
                for base in bases
            )
        )
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [401] * limit + [429] * (29 - limit), [response.text for response in responses]
        response = await client.post(
            f"{second}{TOKEN}", data={"username": "ann@example.com", "password": PASSWORD}
        )
        assert_throttled(response, settings.login_failure_window_seconds)
