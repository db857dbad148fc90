"""Logging in (POST /auth/token) and what a bearer token must be to be accepted."""

from __future__ import annotations

import asyncio
import base64
import json
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from conftest import PASSWORD, Accounts
from jwt.warnings import InsecureKeyLengthWarning

from blogapi.auth import security
from blogapi.auth.security import TokenSubject, create_access_token, read_access_token
from blogapi.config import Settings

TOKEN = "/api/v1/auth/token"
ME = "/api/v1/users/me"
PROBLEM = "application/problem+json"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _forge(settings: Settings, claims: dict[str, Any], *, key: str | None = None) -> str:
    secret = key if key is not None else settings.secret_key.get_secret_value()
    return jwt.encode(claims, secret, algorithm="HS256")


def _unsigned(claims: dict[str, Any]) -> str:
    """A JWT with `alg: none` and no signature, built by hand."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def _assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == 401
    assert body["title"] == "Unauthorized"
    assert body["detail"]


# --- POST /auth/token ------------------------------------------------------------------------------


async def test_login_returns_a_bearer_token_with_its_lifetime_and_a_refresh_token(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    account = await accounts.create()

    response = await client.post(TOKEN, data={"username": account.email, "password": PASSWORD})

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.access_token_minutes * 60
    assert isinstance(body["access_token"], str)
    assert body["access_token"]
    assert isinstance(body["refresh_token"], str)
    assert len(body["refresh_token"]) >= 43  # 32 random bytes, base64url


async def test_a_token_response_may_not_be_stored_by_any_cache(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()

    response = await client.post(TOKEN, data={"username": account.email, "password": PASSWORD})

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"  # RFC 6749 5.1
    assert response.headers["pragma"] == "no-cache"


async def test_the_issued_token_names_the_user_and_expires_after_expires_in(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    account = await accounts.create()

    response = await client.post(TOKEN, data={"username": account.email, "password": PASSWORD})

    body = response.json()
    claims = jwt.decode(body["access_token"], settings.secret_key.get_secret_value(), algorithms=["HS256"])
    assert claims["sub"] == str(account.id)
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert abs(claims["iat"] - datetime.now(UTC).timestamp()) < 10


async def test_the_issued_token_authenticates_requests(client: httpx.AsyncClient, accounts: Accounts) -> None:
    account = await accounts.create()
    token = await accounts.login(account.email)

    response = await client.get(ME, headers=_bearer(token))

    assert response.status_code == 200, response.text
    assert response.json()["id"] == account.id


async def test_login_with_a_wrong_password_is_401_with_www_authenticate(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()

    response = await client.post(TOKEN, data={"username": account.email, "password": PASSWORD + "x"})

    _assert_unauthorized(response)


async def test_login_with_an_unknown_email_is_401_with_www_authenticate(client: httpx.AsyncClient) -> None:
    response = await client.post(TOKEN, data={"username": "nobody@example.com", "password": PASSWORD})

    _assert_unauthorized(response)


async def test_wrong_password_and_unknown_email_give_identical_responses(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()

    wrong_password = await client.post(TOKEN, data={"username": account.email, "password": "wrong password"})
    unknown_email = await client.post(TOKEN, data={"username": "nobody@example.com", "password": PASSWORD})

    assert wrong_password.status_code == unknown_email.status_code == 401
    # Identical but for each request's own id.
    assert wrong_password.json() | {"request_id": None} == unknown_email.json() | {"request_id": None}
    assert wrong_password.json()["request_id"] != unknown_email.json()["request_id"]
    assert wrong_password.headers["www-authenticate"] == unknown_email.headers["www-authenticate"]


async def test_login_email_is_case_insensitive(client: httpx.AsyncClient, accounts: Accounts) -> None:
    account = await accounts.create()

    response = await client.post(TOKEN, data={"username": account.email.upper(), "password": PASSWORD})

    assert response.status_code == 200, response.text
    assert response.json()["access_token"]


async def test_login_without_a_password_is_422(client: httpx.AsyncClient, accounts: Accounts) -> None:
    account = await accounts.create()

    response = await client.post(TOKEN, data={"username": account.email})

    assert response.status_code == 422, response.text
    assert any(error["loc"] == ["body", "password"] for error in response.json()["errors"])


async def test_login_with_a_json_body_instead_of_a_form_is_422(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()

    response = await client.post(TOKEN, json={"username": account.email, "password": PASSWORD})

    assert response.status_code == 422, response.text


async def test_a_failed_login_does_not_echo_the_password(
    client: httpx.AsyncClient, accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    account = await accounts.create()
    secret = "Wr0ng-Pa55word-QRS"

    response = await client.post(TOKEN, data={"username": account.email, "password": secret})

    assert response.status_code == 401
    assert secret not in response.text
    assert secret not in caplog.text


# --- GET /users/me and bearer tokens ---------------------------------------------------------------


async def test_me_returns_the_callers_own_user_with_email(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create("Me Myself")

    response = await client.get(ME, headers=account.headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == account.id
    assert body["name"] == "Me Myself"
    assert body["email"] == account.email
    assert body["is_admin"] is False


async def test_me_shows_each_caller_their_own_user(client: httpx.AsyncClient, accounts: Accounts) -> None:
    first = await accounts.create()
    second = await accounts.create()

    first_me = await client.get(ME, headers=first.headers)
    second_me = await client.get(ME, headers=second.headers)

    assert first_me.json()["id"] == first.id
    assert second_me.json()["id"] == second.id


async def test_me_without_a_token_is_401_with_www_authenticate(client: httpx.AsyncClient) -> None:
    response = await client.get(ME)

    _assert_unauthorized(response)


@pytest.mark.parametrize(
    "authorization",
    ["Bearer not-a-jwt", "Bearer a.b.c", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer " + "x" * 500],
    ids=["garbage", "three-garbage-parts", "empty", "basic-scheme", "long-garbage"],
)
async def test_me_with_a_malformed_token_is_401(client: httpx.AsyncClient, authorization: str) -> None:
    response = await client.get(ME, headers={"Authorization": authorization})

    _assert_unauthorized(response)


async def test_me_with_an_expired_token_is_401(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    account = await accounts.create()
    now = datetime.now(UTC)
    token = _forge(
        settings,
        {
            "sub": str(account.id),
            "sid": account.session_id,
            "iat": now - timedelta(hours=2),
            "exp": now - timedelta(hours=1),
        },
    )

    response = await client.get(ME, headers=_bearer(token))

    _assert_unauthorized(response)


async def test_a_token_that_expires_after_it_was_accepted_is_refused_from_then_on(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    """Verified tokens are remembered (security.read_access_token), their expiry is not."""
    account = await accounts.create()
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=2)
    token = _forge(settings, {"sub": str(account.id), "sid": account.session_id, "iat": now, "exp": expires})

    accepted = await client.get(ME, headers=_bearer(token))
    await asyncio.sleep((expires - datetime.now(UTC)).total_seconds() + 0.2)
    refused = await client.get(ME, headers=_bearer(token))

    assert accepted.status_code == 200, accepted.text
    _assert_unauthorized(refused)


def test_a_token_verified_under_one_secret_is_not_accepted_under_another() -> None:
    subject = TokenSubject(user_id=7, session_id=1)
    token = create_access_token(subject, secret="s" * 32, lifetime=timedelta(minutes=5))

    assert read_access_token(token, secret="s" * 32) == subject
    assert read_access_token(token, secret="t" * 32) is None  # after it was remembered under "s"
    assert read_access_token(token + "x", secret="s" * 32) is None


def test_remembered_tokens_are_bounded() -> None:
    secret = "b" * 32
    for user_id in range(1, security.VERIFIED_TOKENS_MAX + 50):
        token = create_access_token(TokenSubject(user_id, 1), secret=secret, lifetime=timedelta(minutes=5))
        assert read_access_token(token, secret=secret) == TokenSubject(user_id, 1)
    assert len(security._verified) <= security.VERIFIED_TOKENS_MAX


async def test_a_forged_token_with_the_right_key_and_future_expiry_is_accepted(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    """The control for the forged-token tests below: only the one property each changes is wrong."""
    account = await accounts.create()
    now = datetime.now(UTC)
    token = _forge(
        settings,
        {"sub": str(account.id), "sid": account.session_id, "iat": now, "exp": now + timedelta(minutes=5)},
    )

    response = await client.get(ME, headers=_bearer(token))

    assert response.status_code == 200, response.text
    assert response.json()["id"] == account.id


async def test_me_with_a_token_signed_by_another_key_is_401(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    account = await accounts.create()
    now = datetime.now(UTC)
    token = _forge(
        settings,
        {"sub": str(account.id), "sid": account.session_id, "iat": now, "exp": now + timedelta(minutes=5)},
        key="another-secret-key-that-is-also-long-enough-987654",
    )

    response = await client.get(ME, headers=_bearer(token))

    _assert_unauthorized(response)


async def test_me_with_an_alg_none_token_is_401(client: httpx.AsyncClient, accounts: Accounts) -> None:
    account = await accounts.create()
    now = int(datetime.now(UTC).timestamp())
    token = _unsigned({"sub": str(account.id), "sid": account.session_id, "iat": now, "exp": now + 300})

    response = await client.get(ME, headers=_bearer(token))

    _assert_unauthorized(response)


async def test_me_with_a_token_without_exp_is_401(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    account = await accounts.create()
    token = _forge(settings, {"sub": str(account.id), "sid": account.session_id, "iat": datetime.now(UTC)})

    response = await client.get(ME, headers=_bearer(token))

    _assert_unauthorized(response)


@pytest.mark.parametrize("sub", ["0", "-1", str(2**31), str(2**63), "abc", "", "1.5"])
async def test_me_with_a_token_for_an_impossible_user_id_is_401(
    client: httpx.AsyncClient, settings: Settings, sub: str
) -> None:
    now = datetime.now(UTC)
    token = _forge(settings, {"sub": sub, "iat": now, "exp": now + timedelta(minutes=5)})

    response = await client.get(ME, headers=_bearer(token))

    _assert_unauthorized(response)


async def test_me_with_a_token_for_a_user_that_never_existed_is_401(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    account = await accounts.create()
    now = datetime.now(UTC)
    token = _forge(settings, {"sub": str(account.id + 1000), "iat": now, "exp": now + timedelta(minutes=5)})

    response = await client.get(ME, headers=_bearer(token))

    _assert_unauthorized(response)


async def test_me_with_the_token_of_a_deleted_user_is_401(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()
    deleted = await client.delete(f"/api/v1/users/{account.id}", headers=account.headers)
    assert deleted.status_code == 204, deleted.text

    response = await client.get(ME, headers=account.headers)

    _assert_unauthorized(response)


async def test_the_token_of_a_deleted_user_does_not_authenticate_a_later_sign_up(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """A deleted user's id must not be handed to a new account, or their token opens it."""
    account = await accounts.create()
    deleted = await client.delete(f"/api/v1/users/{account.id}", headers=account.headers)
    assert deleted.status_code == 204, deleted.text
    newcomer = await accounts.create()

    response = await client.get(ME, headers=account.headers)

    _assert_unauthorized(response)
    assert newcomer.email not in response.text


async def test_an_invalid_token_on_an_endpoint_with_optional_auth_is_401_not_anonymous(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/v1/users", headers=_bearer("not-a-jwt"))

    _assert_unauthorized(response)


async def test_a_token_issued_before_sessions_existed_is_a_clean_401(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    """The claims a token had before the upgrade (the user's token_version, no session)."""
    account = await accounts.create()
    now = datetime.now(UTC)
    claims = {"sub": str(account.id), "ver": 1, "iat": now, "exp": now + timedelta(minutes=5)}
    token = _forge(settings, {**claims, "auth_time": int(now.timestamp())})

    for response in (
        await client.get(ME, headers=_bearer(token)),
        await client.get("/api/v1/users", headers=_bearer(token)),
        await client.post("/api/v1/auth/logout", headers=_bearer(token)),
    ):
        _assert_unauthorized(response)


async def test_changing_the_password_ends_every_other_session_and_keeps_the_current_one(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()
    other_sessions = [await accounts.login(account.email) for _ in range(2)]
    changed = await client.patch(
        f"/api/v1/users/{account.id}", json={"password": "a brand new password"}, headers=account.headers
    )
    assert changed.status_code == 200

    for token in other_sessions:
        _assert_unauthorized(await client.get(ME, headers=_bearer(token)))
    assert (await client.get(ME, headers=account.headers)).status_code == 200
    fresh = await accounts.login(account.email, "a brand new password")
    assert (await client.get(ME, headers=_bearer(fresh))).status_code == 200


async def test_an_admin_setting_a_password_ends_every_session_of_that_user(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    admin = await accounts.create(admin=True)
    account = await accounts.create()
    changed = await client.patch(
        f"/api/v1/users/{account.id}", json={"password": "set by an admin"}, headers=admin.headers
    )
    assert changed.status_code == 200

    _assert_unauthorized(await client.get(ME, headers=account.headers))
    assert (await client.get(ME, headers=admin.headers)).status_code == 200


async def test_changing_only_the_name_keeps_tokens_valid(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    account = await accounts.create()
    changed = await client.patch(
        f"/api/v1/users/{account.id}", json={"name": "Renamed"}, headers=account.headers
    )
    assert changed.status_code == 200
    assert (await client.get(ME, headers=account.headers)).status_code == 200


async def test_a_token_signed_with_the_right_key_but_another_algorithm_is_401(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    account = await accounts.create()
    now = datetime.now(UTC)
    claims = {
        "sub": str(account.id),
        "sid": account.session_id,
        "iat": now,
        "exp": now + timedelta(minutes=5),
    }
    with warnings.catch_warnings():  # the test key is short for HS512: what matters is the algorithm
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        token = jwt.encode(claims, settings.secret_key.get_secret_value(), algorithm="HS512")

    assert (await client.get(ME, headers=_bearer(token))).status_code == 401


@pytest.mark.parametrize("missing", ["sub", "iat", "sid"])
async def test_a_token_missing_a_required_claim_is_401(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings, missing: str
) -> None:
    account = await accounts.create()
    now = datetime.now(UTC)
    claims = {
        "sub": str(account.id),
        "sid": account.session_id,
        "iat": now,
        "exp": now + timedelta(minutes=5),
    }
    del claims[missing]

    assert (await client.get(ME, headers=_bearer(_forge(settings, claims)))).status_code == 401
