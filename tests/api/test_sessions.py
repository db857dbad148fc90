"""Login sessions: refresh (rotation and reuse), logout, listing and ending one's sessions,
pruning (issue 11, "Sessions and tokens")."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from conftest import PASSWORD, Account, Accounts, StatementCounter, assert_problem
from sqlalchemy import func, select, update

from blogapi.auth.sessions import service as sessions_service
from blogapi.auth.sessions.models import LoginSession, RefreshToken
from blogapi.config import Settings
from blogapi.db import Database, utcnow

TOKEN = "/api/v1/auth/token"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/users/me"
SESSIONS = "/api/v1/users/me/sessions"
PROBLEMS = "https://blogapi.dev/problems/"
REUSED = PROBLEMS + "refresh-token-reused"
INVALID_REFRESH = PROBLEMS + "invalid-refresh-token"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post(REFRESH, json={"refresh_token": refresh_token})


def assert_refused(response: httpx.Response, problem_type: str = PROBLEMS + "unauthorized") -> None:
    problem = assert_problem(response, 401)
    assert problem["type"] == problem_type, problem
    assert response.headers["www-authenticate"] == "Bearer"


async def session_row(database: Database, session_id: int) -> Any:
    async with database.engine.connect() as connection:
        return (await connection.execute(select(LoginSession).where(LoginSession.id == session_id))).one()


async def set_session(database: Database, session_id: int, **values: Any) -> None:
    async with database.engine.begin() as connection:
        await connection.execute(update(LoginSession).where(LoginSession.id == session_id).values(**values))


# --- login and refresh -------------------------------------------------------------------------


async def test_a_login_records_its_session_with_address_and_user_agent(
    client: httpx.AsyncClient, accounts: Accounts, database: Database, settings: Settings
) -> None:
    account = await accounts.create()
    response = await client.post(
        TOKEN,
        data={"username": account.email, "password": PASSWORD},
        headers={"User-Agent": "Agent/1.0 " + "x" * 400},
    )
    assert response.status_code == 200, response.text
    session_id = jwt.decode(response.json()["access_token"], options={"verify_signature": False})["sid"]

    row = await session_row(database, session_id)
    assert row.user_id == account.id
    assert row.address == "127.0.0.1"  # httpx's ASGI transport's client
    assert row.user_agent == ("Agent/1.0 " + "x" * 400)[:255]
    assert row.revoked_at is None
    assert row.expires_at - row.created_at == timedelta(days=settings.session_days)
    async with database.engine.connect() as connection:
        stored = (await connection.scalars(select(RefreshToken.token_hash))).all()
    # Only the hash of a refresh token is stored.
    assert sessions_service.hash_refresh_token(response.json()["refresh_token"]) in stored
    assert response.json()["refresh_token"] not in stored


async def test_a_refresh_returns_new_tokens_of_the_same_session(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    account = await accounts.create()

    response = await refresh(client, account.refresh_token)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["refresh_token"] != account.refresh_token
    assert body["expires_in"] == settings.access_token_minutes * 60
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sid"] == account.session_id
    assert (await client.get(ME, headers=bearer(body["access_token"]))).json()["id"] == account.id
    # The chain goes on: the new refresh token works once too.
    assert (await refresh(client, body["refresh_token"])).status_code == 200


async def test_an_unknown_refresh_token_is_401(client: httpx.AsyncClient) -> None:
    assert_refused(await refresh(client, "never-issued"), INVALID_REFRESH)


@pytest.mark.parametrize(
    "body",
    [{}, {"refresh_token": ""}, {"refresh_token": "x" * 129}, {"refresh_token": "x", "user_id": 1}],
)
async def test_a_malformed_refresh_request_is_422(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    assert_problem(await client.post(REFRESH, json=body), 422)


async def test_the_refresh_token_of_an_expired_session_is_401(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    account = await accounts.create()
    await set_session(database, account.session_id, expires_at=utcnow() - timedelta(seconds=1))

    assert_refused(await refresh(client, account.refresh_token), INVALID_REFRESH)


async def test_no_access_token_outlives_its_session(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    account = await accounts.create()
    await set_session(database, account.session_id, expires_at=utcnow() + timedelta(minutes=2))

    response = await refresh(client, account.refresh_token)

    assert response.status_code == 200, response.text
    assert 60 < response.json()["expires_in"] <= 120


async def test_a_refreshed_access_token_proves_the_sessions_login_not_a_new_one(
    client: httpx.AsyncClient, accounts: Accounts, database: Database, settings: Settings
) -> None:
    """A refresh checks no password: changing one's password still needs a recent login."""
    account = await accounts.create()
    login_time = utcnow() - timedelta(minutes=settings.recent_login_minutes + 1)
    await set_session(database, account.session_id, created_at=login_time)

    tokens = (await refresh(client, account.refresh_token)).json()
    response = await client.patch(
        f"/api/v1/users/{account.id}",
        json={"password": "a brand new password"},
        headers=bearer(tokens["access_token"]),
    )

    assert assert_problem(response, 403)["type"] == PROBLEMS + "reauthentication-required"
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["auth_time"] == int(login_time.timestamp())


# --- reuse: the theft scenario -------------------------------------------------------------------


@pytest.mark.parametrize("first", ["thief", "owner"])
async def test_a_stolen_refresh_token_used_twice_ends_the_session_for_both_holders(
    client: httpx.AsyncClient, accounts: Accounts, first: str
) -> None:
    """The owner and a thief both hold one refresh token: whoever uses it second revokes the
    session, and neither the tokens the first one got nor the owner's access token work."""
    owner = await accounts.create()
    stolen = owner.refresh_token

    first_use = await refresh(client, stolen)
    assert first_use.status_code == 200, first_use.text
    newer = first_use.json()
    second_use = await refresh(client, stolen)

    assert_refused(second_use, REUSED)
    assert_refused(await refresh(client, newer["refresh_token"]), INVALID_REFRESH)
    assert_refused(await client.get(ME, headers=bearer(newer["access_token"])))
    assert_refused(await client.get(ME, headers=owner.headers))
    # The owner logs in again: a new session, unaffected.
    again = await accounts.login(owner.email)
    assert (await client.get(ME, headers=bearer(again))).status_code == 200


async def test_a_refresh_token_rotated_long_ago_still_counts_as_reuse(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()
    first = account.refresh_token
    current = first
    for _ in range(3):
        current = (await refresh(client, current)).json()["refresh_token"]

    assert_refused(await refresh(client, first), REUSED)
    assert_refused(await refresh(client, current), INVALID_REFRESH)


async def test_reuse_ends_only_that_session(client: httpx.AsyncClient, accounts: Accounts) -> None:
    account = await accounts.create()
    other_device = await accounts.login_tokens(account.email)
    await refresh(client, account.refresh_token)

    assert_refused(await refresh(client, account.refresh_token), REUSED)

    assert (await client.get(ME, headers=bearer(other_device["access_token"]))).status_code == 200
    assert (await refresh(client, other_device["refresh_token"])).status_code == 200


async def test_concurrent_refreshes_with_one_token_let_exactly_one_through_and_end_the_session(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Decided: the losers of the race are reuse (a client sends one refresh at a time; two
    at once look exactly like a thief racing its victim), so the session ends."""
    account = await accounts.create()

    responses = await asyncio.gather(*(refresh(client, account.refresh_token) for _ in range(8)))

    winners = [response for response in responses if response.status_code == 200]
    assert len(winners) == 1, [response.text for response in responses]
    # The first loser finds the token rotated and ends the session; a later one may find the
    # session ended already.
    losers = [assert_problem(response, 401)["type"] for response in responses if response.status_code != 200]
    assert REUSED in losers, losers
    assert set(losers) <= {REUSED, INVALID_REFRESH}, losers
    assert_refused(await client.get(ME, headers=bearer(winners[0].json()["access_token"])))
    assert_refused(await refresh(client, winners[0].json()["refresh_token"]), INVALID_REFRESH)


async def test_two_refreshes_that_both_read_the_token_before_either_rotates_it_let_one_through(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    """The race at its narrowest: the test holds the token's row (on SQLite, the write lock)
    while both refreshes start, so that on PostgreSQL and MariaDB both have read it unrotated
    and wait to rotate it; the row's lock then lets one rotate and the other finds none."""
    account = await accounts.create()
    token_hash = sessions_service.hash_refresh_token(account.refresh_token)
    async with database.engine.begin() as connection:
        await connection.execute(
            select(RefreshToken.token_hash).where(RefreshToken.token_hash == token_hash).with_for_update()
        )
        racing = [asyncio.ensure_future(refresh(client, account.refresh_token)) for _ in range(2)]
        await asyncio.sleep(0.5)  # time for both to read the row and block on it; not asserted
    responses = await asyncio.gather(*racing)

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 401], [response.text for response in responses]
    (loser,) = [response for response in responses if response.status_code == 401]
    assert_refused(loser, REUSED)
    (winner,) = [response for response in responses if response.status_code == 200]
    assert_refused(await client.get(ME, headers=bearer(winner.json()["access_token"])))


# --- logout --------------------------------------------------------------------------------------


async def test_logout_ends_the_session_its_access_and_refresh_token(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    account = await accounts.create()
    other_device = await accounts.login(account.email)

    response = await client.post(LOGOUT, headers=account.headers)

    assert response.status_code == 204, response.text
    assert_refused(await client.get(ME, headers=account.headers))
    assert_refused(await client.get("/api/v1/users", headers=account.headers))
    assert_refused(await client.post("/api/v1/posts", json={"title": "t"}, headers=account.headers))
    assert_refused(await client.post(LOGOUT, headers=account.headers))
    assert_refused(await refresh(client, account.refresh_token), INVALID_REFRESH)
    assert (await session_row(database, account.session_id)).revoked_at is not None
    assert (await client.get(ME, headers=bearer(other_device))).status_code == 200


async def test_logout_without_a_token_is_401(client: httpx.AsyncClient) -> None:
    assert_refused(await client.post(LOGOUT))


# --- listing and ending one's sessions ---------------------------------------------------------


async def test_the_session_list_shows_ones_open_sessions_newest_first_the_current_marked(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()
    second = await accounts.login_tokens(account.email)
    ended = await accounts.login(account.email)
    assert (await client.post(LOGOUT, headers=bearer(ended))).status_code == 204
    stranger = await accounts.create()

    response = await client.get(SESSIONS, headers=account.headers)

    assert response.status_code == 200, response.text
    items = response.json()["items"]
    second_id = jwt.decode(second["access_token"], options={"verify_signature": False})["sid"]
    assert [item["id"] for item in items] == [second_id, account.session_id]
    assert [item["current"] for item in items] == [False, True]
    assert stranger.session_id not in [item["id"] for item in items]
    assert set(items[0]) == {
        "id",
        "created_at",
        "last_used_at",
        "expires_at",
        "address",
        "user_agent",
        "current",
    }
    assert items[0]["address"] == "127.0.0.1"


async def test_the_session_list_pages_with_a_cursor(client: httpx.AsyncClient, accounts: Accounts) -> None:
    account = await accounts.create()
    for _ in range(2):
        await accounts.login(account.email)

    seen: list[int] = []
    cursor: str | None = None
    for _ in range(3):
        params: dict[str, Any] = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(SESSIONS, params=params, headers=account.headers)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
    assert cursor is None
    assert len(seen) == 3
    assert seen == sorted(seen, reverse=True)


async def test_ending_another_of_ones_sessions_refuses_its_tokens(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()
    other = await accounts.login_tokens(account.email)
    other_id = jwt.decode(other["access_token"], options={"verify_signature": False})["sid"]

    response = await client.delete(f"{SESSIONS}/{other_id}", headers=account.headers)

    assert response.status_code == 204, response.text
    assert_refused(await client.get(ME, headers=bearer(other["access_token"])))
    assert_refused(await refresh(client, other["refresh_token"]), INVALID_REFRESH)
    assert (await client.get(ME, headers=account.headers)).status_code == 200
    # Ended already: no such open session.
    assert_problem(await client.delete(f"{SESSIONS}/{other_id}", headers=account.headers), 404)


async def test_another_users_session_is_404_and_keeps_working(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    victim = await accounts.create()
    attacker = await accounts.create(admin=True)

    response = await client.delete(f"{SESSIONS}/{victim.session_id}", headers=attacker.headers)

    assert_problem(response, 404)
    assert (await client.get(ME, headers=victim.headers)).status_code == 200


@pytest.mark.parametrize("session_id", ["0", "2147483648", "abc", "99999"])
async def test_an_impossible_or_unknown_session_id_is_a_4xx(
    client: httpx.AsyncClient, accounts: Accounts, session_id: str
) -> None:
    account = await accounts.create()
    response = await client.delete(f"{SESSIONS}/{session_id}", headers=account.headers)
    assert_problem(response, 404 if session_id == "99999" else 422)


# --- password changes ----------------------------------------------------------------------------


async def test_a_password_change_ends_the_other_sessions_refresh_tokens_and_keeps_the_current_ones(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()
    other = await accounts.login_tokens(account.email)

    changed = await client.patch(
        f"/api/v1/users/{account.id}", json={"password": "a brand new password"}, headers=account.headers
    )

    assert changed.status_code == 200, changed.text
    assert_refused(await refresh(client, other["refresh_token"]), INVALID_REFRESH)
    assert (await refresh(client, account.refresh_token)).status_code == 200
    listed = (await client.get(SESSIONS, headers=account.headers)).json()["items"]
    assert [item["id"] for item in listed] == [account.session_id]


# --- last use, pruning, deletion ---------------------------------------------------------------


async def test_last_used_is_written_at_most_once_a_minute(
    client: httpx.AsyncClient, accounts: Accounts, database: Database, statements: StatementCounter
) -> None:
    account = await accounts.create()
    long_ago = utcnow() - timedelta(minutes=5)
    await set_session(database, account.session_id, last_used_at=long_ago)

    statements.reset()
    assert (await client.get(ME, headers=account.headers)).status_code == 200
    touched = [sql for sql in statements.statements if sql.lstrip().upper().startswith("UPDATE")]
    first_use = (await session_row(database, account.session_id)).last_used_at
    statements.reset()
    for _ in range(3):
        assert (await client.get(ME, headers=account.headers)).status_code == 200
    assert (
        await client.post("/api/v1/posts", json={"title": "t"}, headers=account.headers)
    ).status_code == 201
    later = [
        sql for sql in statements.statements if "UPDATE session" in sql.replace('"', "").replace("`", "")
    ]

    assert len(touched) == 1
    assert first_use > long_ago
    assert later == []
    assert (await session_row(database, account.session_id)).last_used_at == first_use


async def test_checking_the_callers_session_is_the_one_statement_that_loads_the_caller(
    client: httpx.AsyncClient, accounts: Accounts, statements: StatementCounter
) -> None:
    """What the token-version check cost before sessions: the user's row joined with the
    session's, both by primary key, in one statement."""
    account = await accounts.create()
    assert (await client.get(ME, headers=account.headers)).status_code == 200

    statements.reset()
    assert (await client.get(ME, headers=account.headers)).status_code == 200

    queries = [sql for sql in statements.statements if sql.lstrip().upper().startswith("SELECT")]
    assert len(queries) == 1, statements.statements
    assert "session" in queries[0]
    writes = [
        sql
        for sql in statements.statements
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
    ]
    assert writes == []


async def test_a_writing_request_records_a_stale_sessions_use_in_its_transaction(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    account = await accounts.create()
    long_ago = utcnow() - timedelta(minutes=5)
    await set_session(database, account.session_id, last_used_at=long_ago)

    assert (
        await client.post("/api/v1/posts", json={"title": "t"}, headers=account.headers)
    ).status_code == 201

    assert (await session_row(database, account.session_id)).last_used_at > long_ago


async def count_sessions(database: Database) -> int:
    async with database.engine.connect() as connection:
        count = await connection.scalar(select(func.count()).select_from(LoginSession))
        assert count is not None
        return count


async def test_each_login_prunes_a_bounded_batch_of_ended_sessions(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    account = await accounts.create()
    extra = sessions_service.PRUNE_BATCH * 2 + 3
    for _ in range(extra):
        await accounts.login(account.email)
    async with database.engine.begin() as connection:
        await connection.execute(
            update(LoginSession)
            .where(LoginSession.id != account.session_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert await count_sessions(database) == extra + 1

    await accounts.login(account.email)  # adds one, prunes a batch
    assert await count_sessions(database) == extra + 2 - sessions_service.PRUNE_BATCH
    await accounts.login(account.email)
    await accounts.login(account.email)
    # Every ended session is gone; the open ones (the first and the three new) stay.
    assert await count_sessions(database) == 4
    async with database.engine.connect() as connection:
        orphans = await connection.scalar(
            select(func.count())
            .select_from(RefreshToken)
            .where(~RefreshToken.session_id.in_(select(LoginSession.id)))
        )
    assert orphans == 0  # the refresh tokens went with their sessions
    assert (await client.get(ME, headers=account.headers)).status_code == 200


async def test_deleting_a_user_deletes_their_sessions(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    account: Account = await accounts.create()
    other = await accounts.login_tokens(account.email)

    deleted = await client.delete(f"/api/v1/users/{account.id}", headers=account.headers)

    assert deleted.status_code == 204, deleted.text
    assert await count_sessions(database) == 0
    assert_refused(await refresh(client, other["refresh_token"]), INVALID_REFRESH)
    assert_refused(await client.get(ME, headers=bearer(other["access_token"])))
