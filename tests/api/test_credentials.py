"""Changing one's own password or email: proof of a recent login, and hashing without a connection."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from conftest import PASSWORD, TEST_SECRET, Account, Accounts, assert_problem

from blogapi.auth import security
from blogapi.auth.security import hash_password, verify_password
from blogapi.config import Settings
from blogapi.db import Database

USERS = "/api/v1/users"
TOKEN = "/api/v1/auth/token"
NEW_PASSWORD = "a brand new password"


def token_from_a_login_ago(account: Account, age: timedelta) -> dict[str, str]:
    """A valid token for `account` whose login (`auth_time`) was `age` ago."""
    now = datetime.now(UTC)
    claims = {
        "sub": str(account.id),
        "sid": account.session_id,
        "iat": now,
        "exp": now + timedelta(hours=1),
        "auth_time": int((now - age).timestamp()),
    }
    return {"Authorization": f"Bearer {jwt.encode(claims, TEST_SECRET, algorithm=security.ALGORITHM)}"}


def stale(account: Account, settings: Settings) -> dict[str, str]:
    return token_from_a_login_ago(account, timedelta(minutes=settings.recent_login_minutes, seconds=5))


async def login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(TOKEN, data={"username": email, "password": password})


@pytest.mark.parametrize("change", [{"password": NEW_PASSWORD}, {"email": "taken-over@example.com"}])
async def test_a_token_without_a_recent_login_cannot_change_its_own_password_or_email(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings, change: dict[str, str]
) -> None:
    ann = await accounts.create()
    response = await client.patch(f"{USERS}/{ann.id}", json=change, headers=stale(ann, settings))
    problem = assert_problem(response, 403)
    assert problem["type"] == "https://blogapi.dev/problems/reauthentication-required"
    assert "current_password" in problem["detail"]
    assert (await login(client, ann.email, PASSWORD)).status_code == 200


async def test_a_token_without_auth_time_proves_no_recent_login(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    now = datetime.now(UTC)
    claims = {"sub": str(ann.id), "sid": ann.session_id, "iat": now, "exp": now + timedelta(hours=1)}
    headers = {"Authorization": f"Bearer {jwt.encode(claims, TEST_SECRET, algorithm=security.ALGORITHM)}"}
    response = await client.patch(f"{USERS}/{ann.id}", json={"password": NEW_PASSWORD}, headers=headers)
    assert_problem(response, 403)


async def test_a_stale_token_may_still_change_the_name(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    response = await client.patch(f"{USERS}/{ann.id}", json={"name": "Renamed"}, headers=stale(ann, settings))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("change", [{"password": NEW_PASSWORD}, {"email": "moved@example.com"}])
async def test_the_current_password_proves_who_changes_their_password_or_email(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings, change: dict[str, str]
) -> None:
    ann = await accounts.create()
    response = await client.patch(
        f"{USERS}/{ann.id}", json={**change, "current_password": PASSWORD}, headers=stale(ann, settings)
    )
    assert response.status_code == 200, response.text
    email = change.get("email", ann.email)
    assert (await login(client, email, change.get("password", PASSWORD))).status_code == 200


async def test_a_recent_login_proves_who_changes_their_password(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()  # logged in just now
    response = await client.patch(f"{USERS}/{ann.id}", json={"password": NEW_PASSWORD}, headers=ann.headers)
    assert response.status_code == 200, response.text


async def test_a_wrong_current_password_is_403_and_counts_as_a_failed_login(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    headers = stale(ann, settings)
    body = {"password": NEW_PASSWORD, "current_password": "not the password"}
    for _ in range(settings.login_failures_per_account_and_address):
        response = await client.patch(f"{USERS}/{ann.id}", json=body, headers=headers)
        problem = assert_problem(response, 403)
        assert problem["type"] == "https://blogapi.dev/problems/reauthentication-required"
        assert problem["detail"] == "current_password is incorrect"
    response = await client.patch(f"{USERS}/{ann.id}", json=body, headers=headers)
    assert_problem(response, 429)
    assert response.headers["retry-after"].isdigit()
    assert_problem(await login(client, ann.email, PASSWORD), 429)


async def test_an_admin_changes_another_users_password_without_proof(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    admin, ann = await accounts.create(admin=True), await accounts.create()
    response = await client.patch(
        f"{USERS}/{ann.id}", json={"password": NEW_PASSWORD}, headers=stale(admin, settings)
    )
    assert response.status_code == 200, response.text
    assert (await login(client, ann.email, NEW_PASSWORD)).status_code == 200


async def test_an_admin_needs_proof_to_change_their_own_password(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    admin = await accounts.create(admin=True)
    response = await client.patch(
        f"{USERS}/{admin.id}", json={"password": NEW_PASSWORD}, headers=stale(admin, settings)
    )
    assert_problem(response, 403)


async def test_current_password_is_documented_and_a_429_is_declared(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    operation = document["paths"]["/api/v1/users/{user_id}"]["patch"]
    assert {"401", "403", "429"} <= set(operation["responses"])
    assert "current_password" in document["components"]["schemas"]["UserUpdate"]["properties"]


# --- hashing holds no connection ------------------------------------------------------------------


async def test_a_password_change_holds_no_pooled_connection_while_it_hashes(
    client: httpx.AsyncClient, accounts: Accounts, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann = await accounts.create()
    checked_out_while_hashing = []

    async def observed_hash_password(password: str, *, concurrency: int) -> str:
        checked_out_while_hashing.append(database.engine.pool.checkedout())  # type: ignore[attr-defined]
        return await hash_password(password, concurrency=concurrency)

    monkeypatch.setattr("blogapi.users.service.hash_password", observed_hash_password)
    response = await client.patch(f"{USERS}/{ann.id}", json={"password": NEW_PASSWORD}, headers=ann.headers)
    assert response.status_code == 200, response.text
    assert checked_out_while_hashing == [0]


async def test_checking_the_current_password_holds_no_pooled_connection(
    client: httpx.AsyncClient,
    accounts: Accounts,
    database: Database,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ann = await accounts.create()
    checked_out_while_verifying = []

    async def observed_verify(password: str, password_hash: str | None, *, concurrency: int) -> bool:
        checked_out_while_verifying.append(database.engine.pool.checkedout())  # type: ignore[attr-defined]
        return await verify_password(password, password_hash, concurrency=concurrency)

    monkeypatch.setattr("blogapi.auth.service.verify_password", observed_verify)
    response = await client.patch(
        f"{USERS}/{ann.id}",
        json={"password": NEW_PASSWORD, "current_password": PASSWORD},
        headers=stale(ann, settings),
    )
    assert response.status_code == 200, response.text
    assert checked_out_while_verifying == [0]


async def test_concurrent_password_changes_leave_connections_for_other_requests(
    client: httpx.AsyncClient, accounts: Accounts, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While many password changes hash at once, none of them holds a connection."""
    people = [await accounts.create() for _ in range(6)]
    hashing = asyncio.Event()
    release = asyncio.Event()
    started: list[str] = []

    async def slow_hash_password(password: str, *, concurrency: int) -> str:
        started.append(password)
        if len(started) == len(people):
            hashing.set()
        await release.wait()
        return await hash_password(password, concurrency=concurrency)

    monkeypatch.setattr("blogapi.users.service.hash_password", slow_hash_password)
    changes = [
        asyncio.create_task(
            client.patch(f"{USERS}/{person.id}", json={"password": NEW_PASSWORD}, headers=person.headers)
        )
        for person in people
    ]
    await asyncio.wait_for(hashing.wait(), timeout=30)
    # Every change is hashing now: an unrelated read still gets a connection at once.
    assert (await client.get(f"{USERS}/{people[0].id}")).status_code == 200
    assert database.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    release.set()
    responses: list[Any] = await asyncio.gather(*changes)
    assert [response.status_code for response in responses] == [200] * len(people)


async def test_a_revoked_token_changing_a_password_is_401_and_costs_no_hash(
    client: httpx.AsyncClient, accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann = await accounts.create()
    other_device = {"Authorization": f"Bearer {await accounts.login(ann.email)}"}
    changed = await client.patch(f"{USERS}/{ann.id}", json={"password": NEW_PASSWORD}, headers=ann.headers)
    assert changed.status_code == 200, changed.text
    hashed: list[str] = []

    async def counting_hash(password: str, *, concurrency: int) -> str:
        hashed.append(password)
        return await hash_password(password, concurrency=concurrency)

    monkeypatch.setattr("blogapi.users.service.hash_password", counting_hash)
    response = await client.patch(
        f"{USERS}/{ann.id}", json={"password": "yet another one"}, headers=other_device
    )
    assert_problem(response, 401)
    assert hashed == []
