"""Disabled accounts (issue 11, "Admin and CLI"): an admin sets `is_active: false`."""

from __future__ import annotations

import httpx
from conftest import PASSWORD, Accounts, assert_problem

TOKEN = "/api/v1/auth/token"
REFRESH = "/api/v1/auth/refresh"
ME = "/api/v1/users/me"
USERS = "/api/v1/users"
DISABLED = "https://blogapi.dev/problems/account-disabled"


async def test_an_admin_disabling_an_account_ends_its_sessions_and_it_cannot_log_in(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    admin = await accounts.create(admin=True)
    ann = await accounts.create()
    post = await client.post("/api/v1/posts", json={"title": "Kept"}, headers=ann.headers)
    assert post.status_code == 201, post.text

    disabled = await client.patch(f"{USERS}/{ann.id}", json={"is_active": False}, headers=admin.headers)

    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["is_active"] is False
    assert_problem(await client.get(ME, headers=ann.headers), 401)
    assert_problem(await client.post(REFRESH, json={"refresh_token": ann.refresh_token}), 401)
    login = await client.post(TOKEN, data={"username": ann.email, "password": PASSWORD})
    assert assert_problem(login, 401)["type"] == DISABLED
    # Without the password nothing says the account exists, let alone that it is disabled.
    wrong = await client.post(TOKEN, data={"username": ann.email, "password": "wrong password"})
    assert assert_problem(wrong, 401)["type"] == "https://blogapi.dev/problems/invalid-credentials"
    # Its posts stay readable.
    assert (await client.get(f"/api/v1/posts/{post.json()['id']}")).status_code == 200


async def test_an_enabled_account_logs_in_again_with_new_sessions_only(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    admin = await accounts.create(admin=True)
    ann = await accounts.create()
    await client.patch(f"{USERS}/{ann.id}", json={"is_active": False}, headers=admin.headers)

    enabled = await client.patch(f"{USERS}/{ann.id}", json={"is_active": True}, headers=admin.headers)

    assert enabled.status_code == 200, enabled.text
    assert_problem(await client.get(ME, headers=ann.headers), 401)  # the ended sessions stay ended
    token = await accounts.login(ann.email)
    me = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert me.json()["is_active"] is True


async def test_only_an_admin_may_disable_or_enable_an_account(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    bob = await accounts.create()

    assert_problem(
        await client.patch(f"{USERS}/{ann.id}", json={"is_active": False}, headers=ann.headers), 403
    )
    assert_problem(
        await client.patch(f"{USERS}/{ann.id}", json={"is_active": False}, headers=bob.headers), 403
    )
    assert (await client.get(ME, headers=ann.headers)).status_code == 200
    # Sending the value it already has changes nothing and is allowed.
    same = await client.patch(f"{USERS}/{ann.id}", json={"is_active": True}, headers=ann.headers)
    assert same.status_code == 200, same.text


async def test_is_active_is_shown_only_to_the_user_themself_and_admins(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    admin = await accounts.create(admin=True)
    ann = await accounts.create()
    bob = await accounts.create()

    seen = {
        who: (await client.get(f"{USERS}/{ann.id}", headers=headers)).json()["is_active"]
        for who, headers in (
            ("anonymous", {}),
            ("other", bob.headers),
            ("owner", ann.headers),
            ("admin", admin.headers),
        )
    }

    assert seen == {"anonymous": None, "other": None, "owner": True, "admin": True}
