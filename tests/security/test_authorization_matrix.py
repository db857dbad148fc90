"""Who may do what: every API route of the app, walked with every role (PITFALLS G1, G6, D10).

MATRIX is the policy, one row per (method, path) of the app's route table. A route added to
the app without a row here fails `test_every_route_of_the_app_has_a_row_in_the_matrix`, so
no route escapes the authorization review. Each (route, role) runs against fresh objects:
an owner with a post, another user, and an admin.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from conftest import PASSWORD, Account, Accounts, assert_problem
from fastapi.routing import iter_route_contexts

API = "/api/v1"
PROBLEM = "application/problem+json"
ROLES = ("anonymous", "other", "owner", "admin")
WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})


def everyone(status: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


def logged_in(status: int) -> dict[str, int]:
    """Anonymous callers are refused; any logged-in user may."""
    return {"anonymous": 401, "other": status, "owner": status, "admin": status}


def owner_or_admin(status: int) -> dict[str, int]:
    """Only the object's owner (the user themself, or a post's author) and admins may."""
    return {"anonymous": 401, "other": 403, "owner": status, "admin": status}


# (method, path template) -> role -> expected status. "owner" on a collection route is simply
# a logged-in user; on the token route each role logs in with its own credentials (anonymous
# with a wrong password).
MATRIX: dict[tuple[str, str], dict[str, int]] = {
    ("POST", f"{API}/auth/token"): logged_in(200),
    # Each role with its own refresh token (anonymous with one that was never issued).
    ("POST", f"{API}/auth/refresh"): logged_in(200),
    ("POST", f"{API}/auth/logout"): logged_in(204),
    # Anyone may ask for a reset mail (for the owner's email here): the same answer for all.
    ("POST", f"{API}/auth/password-reset"): everyone(202),
    # The token is the credential, not the caller: a token never issued is 400 for every role
    # (tests/api/test_password_reset.py and test_email_verification.py use real ones).
    ("POST", f"{API}/auth/password-reset/confirm"): everyone(400),
    ("POST", f"{API}/auth/verify"): everyone(400),
    ("POST", f"{API}/auth/verify/resend"): logged_in(202),
    ("GET", f"{API}/users/me/sessions"): logged_in(200),
    # The owner's session: nobody else finds it, admins included (it is under /me).
    ("DELETE", f"{API}/users/me/sessions/{{session_id}}"): {
        "anonymous": 401,
        "other": 404,
        "owner": 204,
        "admin": 404,
    },
    ("POST", f"{API}/users"): everyone(201),
    ("GET", f"{API}/users"): everyone(200),
    ("GET", f"{API}/users/me"): logged_in(200),
    ("GET", f"{API}/users/{{user_id}}"): everyone(200),
    ("PATCH", f"{API}/users/{{user_id}}"): owner_or_admin(200),
    ("DELETE", f"{API}/users/{{user_id}}"): owner_or_admin(204),
    ("GET", f"{API}/users/{{user_id}}/posts"): everyone(200),
    ("POST", f"{API}/posts"): logged_in(201),
    ("GET", f"{API}/posts"): everyone(200),
    ("GET", f"{API}/posts/{{post_id}}"): everyone(200),
    ("PATCH", f"{API}/posts/{{post_id}}"): owner_or_admin(200),
    ("DELETE", f"{API}/posts/{{post_id}}"): owner_or_admin(204),
    ("GET", f"{API}/tags"): everyone(200),
    ("GET", "/health/live"): everyone(200),
    ("GET", "/health/ready"): everyone(200),
}


@dataclass
class World:
    """Fresh objects for one request: the owner with one post, another user, an admin."""

    owner: Account
    other: Account
    admin: Account
    post_id: int
    signups: int = 0

    def account(self, role: str) -> Account | None:
        return {"anonymous": None, "other": self.other, "owner": self.owner, "admin": self.admin}[role]

    def headers(self, role: str) -> dict[str, str]:
        account = self.account(role)
        return dict(account.headers) if account else {}

    def url(self, path: str) -> str:
        return path.format(user_id=self.owner.id, post_id=self.post_id, session_id=self.owner.session_id)


async def make_world(client: httpx.AsyncClient, accounts: Accounts) -> World:
    owner = await accounts.create("Owner")
    other = await accounts.create("Other")
    admin = await accounts.create("Admin", admin=True)
    response = await client.post(
        f"{API}/posts", json={"title": "Owner's post", "tags": ["keep"]}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    return World(owner, other, admin, response.json()["id"])


def minimal_body(method: str, path: str, world: World, role: str) -> dict[str, Any]:
    """The request options (body) of a valid minimal request for the route."""
    if (method, path) == ("POST", f"{API}/auth/token"):
        account = world.account(role)
        if account is None:
            return {"data": {"username": world.owner.email, "password": PASSWORD + " wrong"}}
        return {"data": {"username": account.email, "password": PASSWORD}}
    if (method, path) == ("POST", f"{API}/auth/refresh"):
        account = world.account(role)
        return {"json": {"refresh_token": account.refresh_token if account else "never-issued"}}
    if (method, path) == ("POST", f"{API}/auth/password-reset"):
        return {"json": {"email": world.owner.email}}
    if (method, path) == ("POST", f"{API}/auth/password-reset/confirm"):
        return {"json": {"token": "never-issued", "new_password": PASSWORD + " new"}}
    if (method, path) == ("POST", f"{API}/auth/verify"):
        return {"json": {"token": "never-issued"}}
    if (method, path) == ("POST", f"{API}/users"):
        world.signups += 1
        email = f"signup-{role}-{world.signups}@example.com"
        return {"json": {"name": "New", "email": email, "password": PASSWORD}}
    if (method, path) == ("POST", f"{API}/posts"):
        return {"json": {"title": "t"}}
    if (method, path) == ("PATCH", f"{API}/posts/{{post_id}}"):
        return {"json": {"title": "x"}}
    if (method, path) == ("PATCH", f"{API}/users/{{user_id}}"):
        return {"json": {"name": "x"}}
    return {}


async def observable_state(client: httpx.AsyncClient, world: World) -> dict[str, Any]:
    """Everything a refused write could have changed, as the admin sees it."""
    headers = world.admin.headers
    owner = await client.get(f"{API}/users/{world.owner.id}", headers=headers)
    post = await client.get(f"{API}/posts/{world.post_id}", headers=headers)
    users = await client.get(f"{API}/users", params={"limit": 100}, headers=headers)
    posts = await client.get(f"{API}/posts", params={"limit": 100}, headers=headers)
    return {
        "owner": (owner.status_code, owner.json(), owner.headers.get("etag")),
        "post": (post.status_code, post.json(), post.headers.get("etag")),
        "users": users.json(),
        "posts": posts.json(),
    }


def route_table(app: Any) -> set[tuple[str, str]]:
    """Every (method, path) the app serves under /api/ and /health/, nested routers included."""
    table = set()
    for context in iter_route_contexts(app.routes):
        path = context.path_format
        assert path is not None, context
        if path.startswith(("/api/", "/health/")):
            table |= {(method, path) for method in context.methods or ()}
    return table


# --- the route table and the matrix ----------------------------------------------------------------


@pytest.mark.backends("sqlite")
async def test_every_route_of_the_app_has_a_row_in_the_matrix(
    app_and_client: tuple[Any, httpx.AsyncClient],
) -> None:
    app, _ = app_and_client
    served = route_table(app)
    assert served - MATRIX.keys() == set(), "routes without an authorization policy in MATRIX"
    assert MATRIX.keys() - served == set(), "MATRIX rows for routes the app does not serve"


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [(method, path, role) for (method, path), role in itertools.product(MATRIX, ROLES)],
)
async def test_each_role_gets_the_status_the_matrix_gives_on_each_route(
    client: httpx.AsyncClient, accounts: Accounts, method: str, path: str, role: str
) -> None:
    world = await make_world(client, accounts)
    expected = MATRIX[method, path][role]
    before = await observable_state(client, world)

    response = await client.request(
        method, world.url(path), headers=world.headers(role), **minimal_body(method, path, world, role)
    )

    assert response.status_code == expected, f"{role} {method} {path}: {response.text}"
    if expected >= 400:
        assert_problem(response, expected)
    if expected == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if expected in (401, 403) and method in WRITE_METHODS:
        assert await observable_state(client, world) == before, "a refused write changed something"
    await assert_effect(client, world, method, path, response)


async def assert_effect(
    client: httpx.AsyncClient, world: World, method: str, path: str, response: httpx.Response
) -> None:
    """An allowed write did what it says (so a 2xx cannot hide a no-op)."""
    if response.status_code >= 300 or method not in WRITE_METHODS:
        return
    me = f"{API}/users/me"
    if path in (f"{API}/auth/logout", f"{API}/users/me/sessions/{{session_id}}"):
        # The session ended: the token that was used (logout) or the owner's is refused.
        caller = response.request.headers.get("authorization", "")
        token = caller if path.endswith("logout") else world.owner.headers["Authorization"]
        assert (await client.get(me, headers={"Authorization": token})).status_code == 401
        return
    if path in (f"{API}/auth/password-reset", f"{API}/auth/verify/resend"):
        # What they do is mail, after the response: tests/api/test_password_reset.py and
        # test_email_verification.py read it from an SMTP server.
        assert response.status_code == 202
        return
    if path in (f"{API}/auth/token", f"{API}/auth/refresh"):
        token = response.json()["access_token"]
        assert (await client.get(me, headers={"Authorization": f"Bearer {token}"})).status_code == 200
        return
    checks: dict[tuple[str, str], Callable[[], Any]] = {
        ("PATCH", f"{API}/posts/{{post_id}}"): lambda: client.get(world.url(f"{API}/posts/{{post_id}}")),
        ("PATCH", f"{API}/users/{{user_id}}"): lambda: client.get(world.url(f"{API}/users/{{user_id}}")),
        ("DELETE", f"{API}/posts/{{post_id}}"): lambda: client.get(world.url(f"{API}/posts/{{post_id}}")),
        ("DELETE", f"{API}/users/{{user_id}}"): lambda: client.get(world.url(f"{API}/users/{{user_id}}")),
    }
    if method == "PATCH":
        after = await checks[method, path]()
        assert after.status_code == 200
        field = "title" if "posts" in path else "name"
        assert after.json()[field] == "x"
    elif method == "DELETE":
        after = await checks[method, path]()
        assert after.status_code == 404
    elif path == f"{API}/posts":
        created = await client.get(f"{API}/posts/{response.json()['id']}")
        assert created.status_code == 200
        assert created.json()["title"] == "t"
    elif path == f"{API}/users":
        created = await client.get(f"{API}/users/{response.json()['id']}")
        assert created.status_code == 200
        assert created.json()["name"] == "New"


# --- what each role sees ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "sees_email"), [("anonymous", False), ("other", False), ("owner", True), ("admin", True)]
)
async def test_a_users_email_is_shown_only_to_themself_and_admins(
    client: httpx.AsyncClient, accounts: Accounts, role: str, sees_email: bool
) -> None:
    world = await make_world(client, accounts)
    expected = world.owner.email if sees_email else None

    one = await client.get(f"{API}/users/{world.owner.id}", headers=world.headers(role))
    assert one.status_code == 200, one.text
    assert one.json()["email"] == expected

    listed = await client.get(f"{API}/users", params={"limit": 100}, headers=world.headers(role))
    assert listed.status_code == 200, listed.text
    (row,) = [user for user in listed.json()["items"] if user["id"] == world.owner.id]
    assert row["email"] == expected


async def test_an_unsupported_method_on_a_post_is_405_naming_the_allowed_ones(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    world = await make_world(client, accounts)
    before = await observable_state(client, world)

    response = await client.put(
        f"{API}/posts/{world.post_id}", json={"title": "x"}, headers=world.owner.headers
    )

    assert_problem(response, 405)
    allowed = {method.strip() for method in response.headers["allow"].split(",")}
    assert {"GET", "PATCH", "DELETE"} <= allowed
    assert allowed <= {"GET", "HEAD", "PATCH", "DELETE"}
    assert await observable_state(client, world) == before
