"""The admin console (/admin) over HTTP, on every backend: who gets in, what its forms change
(through the API's services, seen through the API), and its cookie, CSRF and CSP rules.

tests/test_admin_browser.py drives the same pages in Chromium.
"""

from __future__ import annotations

import re
from http.cookies import SimpleCookie
from typing import Any

import httpx
import pytest
from conftest import PASSWORD, Account, Accounts, serving
from sqlalchemy import select

from blogapi.admin import security
from blogapi.config import Settings
from blogapi.db import Database
from blogapi.main import create_app
from blogapi.users.models import User

CSRF_INPUT = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
FAILURES_ALLOWED = 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"admin_enabled": True, "login_failures_per_account_and_address": FAILURES_ALLOWED}
    )


def csrf_of(page: httpx.Response) -> str:
    match = CSRF_INPUT.search(page.text)
    assert match is not None, page.text
    return match.group(1)


async def console_login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    form = await client.get("/admin/login")
    assert form.status_code == 200, form.text
    return await client.post(
        "/admin/login", data={"email": email, "password": password, "csrf_token": csrf_of(form)}
    )


async def logged_in_admin(accounts: Accounts, client: httpx.AsyncClient) -> Account:
    admin = await accounts.create("Console Admin", admin=True)
    response = await console_login(client, admin.email)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/admin/users"
    return admin


async def submit(client: httpx.AsyncClient, page_path: str, action: str, **fields: str) -> httpx.Response:
    """Post a form of `page_path` as the browser would: with the page's CSRF token and ETag."""
    page = await client.get(page_path)
    assert page.status_code == 200, page.text
    etag = re.search(r'name="etag" value="([^"]*)"', page.text)
    data = {"csrf_token": csrf_of(page), **({"etag": _unescape(etag.group(1))} if etag else {}), **fields}
    return await client.post(action, data=data)


def _unescape(html: str) -> str:
    return html.replace("&#34;", '"').replace("&quot;", '"')


def set_cookies(response: httpx.Response) -> SimpleCookie:
    cookies: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        cookies.load(header)
    return cookies


async def create_post(client: httpx.AsyncClient, author: Account, tags: list[str]) -> dict[str, object]:
    response = await client.post(
        "/api/v1/posts", json={"title": "A post", "body": "text", "tags": tags}, headers=author.headers
    )
    assert response.status_code == 201, response.text
    post: dict[str, object] = response.json()
    return post


# ---- on or off ----


async def test_the_console_is_a_404_when_it_is_not_enabled(settings: Settings, database: Database) -> None:
    app = create_app(settings.model_copy(update={"admin_enabled": False}), database)
    async with serving(app) as client:
        for path in ("/admin", "/admin/login", "/admin/users", "/admin/static/admin.css"):
            assert (await client.get(path)).status_code == 404, path
        assert (await client.post("/admin/login", data={"email": "a@b.c"})).status_code == 404


def test_the_console_is_off_by_default() -> None:
    assert Settings(_env_file=None).admin_enabled is False


# ---- who gets in ----


async def test_an_admin_logs_in_with_their_account_and_sees_the_users(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    admin = await logged_in_admin(accounts, client)
    page = await client.get("/admin/users")
    assert page.status_code == 200
    assert admin.email in page.text


async def test_pages_without_a_session_redirect_to_the_login_form(client: httpx.AsyncClient) -> None:
    for path in ("/admin/users", "/admin/posts", "/admin/tags", "/admin/users/1", "/admin/posts/1"):
        response = await client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/admin/login"


async def test_a_form_posted_without_a_session_is_refused(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    user = await accounts.create()
    form = await client.get("/admin/login")  # a CSRF cookie and token, but no session
    response = await client.post(
        f"/admin/users/{user.id}/admin", data={"csrf_token": csrf_of(form), "is_admin": "true"}
    )
    assert response.status_code == 401
    assert (await client.get(f"/api/v1/users/{user.id}")).json()["is_admin"] is False


async def test_a_non_admin_is_refused_at_login_and_gets_no_session(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    user = await accounts.create()
    response = await console_login(client, user.email)
    assert response.status_code == 403
    assert "not an admin" in response.text
    assert security.SESSION_COOKIE not in set_cookies(response)
    assert (await client.get("/admin/users")).status_code == 303


async def test_an_admin_demoted_while_logged_in_is_refused_at_the_next_page(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    admin = await logged_in_admin(accounts, client)
    other_admin = await accounts.create(admin=True)
    demoted = await client.patch(
        f"/api/v1/users/{admin.id}", json={"is_admin": False}, headers=other_admin.headers
    )
    assert demoted.status_code == 200, demoted.text
    response = await client.get("/admin/users")
    assert response.status_code == 403
    assert "not an admin" in response.text


async def test_a_wrong_password_is_refused(client: httpx.AsyncClient, accounts: Accounts) -> None:
    admin = await accounts.create(admin=True)
    response = await console_login(client, admin.email, "not the password")
    assert response.status_code == 401
    assert "incorrect" in response.text
    assert security.SESSION_COOKIE not in set_cookies(response)


async def test_a_disabled_admin_is_refused(client: httpx.AsyncClient, accounts: Accounts) -> None:
    admin = await accounts.create(admin=True)
    other_admin = await accounts.create(admin=True)
    disabled = await client.patch(
        f"/api/v1/users/{admin.id}", json={"is_active": False}, headers=other_admin.headers
    )
    assert disabled.status_code == 200, disabled.text
    response = await console_login(client, admin.email)
    assert response.status_code == 401
    assert "disabled" in response.text
    assert security.SESSION_COOKIE not in set_cookies(response)


async def test_logins_are_throttled_as_the_apis_are(client: httpx.AsyncClient, accounts: Accounts) -> None:
    admin = await accounts.create(admin=True)
    for _ in range(FAILURES_ALLOWED):
        assert (await console_login(client, admin.email, "wrong password")).status_code == 401
    throttled = await console_login(client, admin.email)  # the right password, too late
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) >= 1
    # The same counter as the API's login.
    api_login = await client.post("/api/v1/auth/token", data={"username": admin.email, "password": PASSWORD})
    assert api_login.status_code == 429


async def test_logging_out_ends_the_login_session(client: httpx.AsyncClient, accounts: Accounts) -> None:
    await logged_in_admin(accounts, client)
    stolen = client.cookies.get(security.SESSION_COOKIE)
    assert stolen
    page = await client.get("/admin/users")
    assert (await client.post("/admin/logout", data={"csrf_token": csrf_of(page)})).status_code == 303
    client.cookies.set(security.SESSION_COOKIE, stolen, path="/admin")  # replayed
    assert (await client.get("/admin/users")).status_code == 303


# ---- cookies, CSRF, CSP ----


async def test_the_session_cookie_is_httponly_and_samesite_strict_and_not_secure_over_http(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    admin = await accounts.create(admin=True)
    response = await console_login(client, admin.email)
    cookie = set_cookies(response)[security.SESSION_COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "strict"
    assert cookie["path"] == "/admin"
    assert not cookie["secure"]  # over plain http a Secure cookie would never come back


async def test_over_https_the_cookies_are_secure(
    app_and_client: tuple[object, httpx.AsyncClient], accounts: Accounts
) -> None:
    app = app_and_client[0]
    admin = await accounts.create(admin=True)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="https://test") as https:
        form = await https.get("/admin/login")
        assert set_cookies(form)[security.CSRF_COOKIE]["secure"] is True
        response = await console_login(https, admin.email)
        assert response.status_code == 303, response.text
        cookie = set_cookies(response)[security.SESSION_COOKIE]
        assert cookie["secure"] is True
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "strict"


async def test_every_page_has_a_content_security_policy_and_loads_nothing_from_elsewhere(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    admin = await accounts.create(admin=True)
    login = await client.get("/admin/login")
    await console_login(client, admin.email)
    post = await create_post(client, admin, ["x"])
    pages = [login] + [
        await client.get(path)
        for path in (
            "/admin/users",
            f"/admin/users/{admin.id}",
            "/admin/posts",
            f"/admin/posts/{post['id']}",
            "/admin/tags",
        )
    ]
    for page in pages:
        assert page.status_code == 200, page.url
        policy = page.headers["content-security-policy"]
        assert policy == security.CONTENT_SECURITY_POLICY
        assert "default-src 'none'" in policy
        assert "script-src" not in policy  # none allowed: default-src 'none'
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
        assert "<script" not in page.text
        assert " style=" not in page.text
        assert "://" not in page.text, page.url  # every link and asset is on this origin


async def test_a_form_without_a_csrf_token_is_refused(client: httpx.AsyncClient, accounts: Accounts) -> None:
    await logged_in_admin(accounts, client)
    user = await accounts.create()
    response = await client.post(f"/admin/users/{user.id}/admin", data={"is_admin": "true"})
    assert response.status_code == 403
    assert "refused" in response.text
    assert (await client.get(f"/api/v1/users/{user.id}")).json()["is_admin"] is False


async def test_a_form_with_another_browsers_csrf_token_is_refused(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await logged_in_admin(accounts, client)
    user = await accounts.create()
    foreign_token = security.csrf_token(
        "another browser's cookie", "test-secret-key-that-is-long-enough-0123456789"
    )
    response = await client.post(
        f"/admin/users/{user.id}/admin", data={"is_admin": "true", "csrf_token": foreign_token}
    )
    assert response.status_code == 403
    assert (await client.get(f"/api/v1/users/{user.id}")).json()["is_admin"] is False


async def test_a_form_the_browser_marks_cross_site_is_refused_even_with_a_valid_token(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await logged_in_admin(accounts, client)
    user = await accounts.create()
    page = await client.get(f"/admin/users/{user.id}")
    response = await client.post(
        f"/admin/users/{user.id}/admin",
        data={"is_admin": "true", "csrf_token": csrf_of(page)},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert response.status_code == 403
    assert (await client.get(f"/api/v1/users/{user.id}")).json()["is_admin"] is False


async def test_the_login_form_needs_its_csrf_token_too(client: httpx.AsyncClient, accounts: Accounts) -> None:
    admin = await accounts.create(admin=True)
    response = await client.post("/admin/login", data={"email": admin.email, "password": PASSWORD})
    assert response.status_code == 403
    assert security.SESSION_COOKIE not in set_cookies(response)


# ---- writes, through the services ----


async def test_promoting_a_user_makes_them_an_admin_in_the_api(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await logged_in_admin(accounts, client)
    user = await accounts.create()
    path = f"/admin/users/{user.id}"
    response = await submit(client, path, f"{path}/admin", is_admin="true")
    assert response.status_code == 303, response.text
    assert (await client.get(f"/api/v1/users/{user.id}")).json()["is_admin"] is True
    demoted = await submit(client, path, f"{path}/admin", is_admin="false")
    assert demoted.status_code == 303, demoted.text
    assert (await client.get(f"/api/v1/users/{user.id}")).json()["is_admin"] is False


async def test_finding_a_user_by_name_or_by_email(client: httpx.AsyncClient, accounts: Accounts) -> None:
    await logged_in_admin(accounts, client)
    user = await accounts.create("Grace Hopper")
    await accounts.create("Alan Turing")
    by_name = await client.get("/admin/users", params={"q": "hopper"})
    assert f'href="/admin/users/{user.id}"' in by_name.text
    assert "Alan Turing" not in by_name.text
    by_email = await client.get("/admin/users", params={"q": user.email.upper()})
    assert f'href="/admin/users/{user.id}"' in by_email.text
    assert "Alan Turing" not in by_email.text
    nobody = await client.get("/admin/users", params={"q": "nobody@example.com"})
    assert nobody.status_code == 200
    assert "No users found." in nobody.text


async def test_editing_a_posts_tags_normalises_them_and_bumps_its_version(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await logged_in_admin(accounts, client)
    author = await accounts.create()
    post = await create_post(client, author, ["old"])
    before = await client.get(f"/api/v1/posts/{post['id']}")
    path = f"/admin/posts/{post['id']}"
    response = await submit(
        client, path, path, title="A post", body="text\r\nmore", tags="Python, FastAPI python  Café"
    )
    assert response.status_code == 303, response.text
    after = await client.get(f"/api/v1/posts/{post['id']}")
    assert after.json()["tags"] == ["café", "fastapi", "python"]
    assert after.json()["body"] == "text\nmore"
    assert after.headers["etag"] != before.headers["etag"]
    tags = {tag["name"]: tag["post_count"] for tag in (await client.get("/api/v1/tags")).json()["items"]}
    assert tags == {"café": 1, "fastapi": 1, "python": 1}  # "old" lost its one post
    listed = await client.get("/admin/posts", params={"tag": "FastAPI"})
    assert f'href="/admin/posts/{post["id"]}"' in listed.text


async def test_invalid_tags_are_a_422_page_and_change_nothing(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await logged_in_admin(accounts, client)
    author = await accounts.create()
    post = await create_post(client, author, ["kept"])
    path = f"/admin/posts/{post['id']}"
    response = await submit(client, path, path, title="A post", body="", tags="ok no/slash")
    assert response.status_code == 422
    assert "tags" in response.text
    assert (await client.get(f"/api/v1/posts/{post['id']}")).json()["tags"] == ["kept"]


async def test_a_form_older_than_the_record_is_refused_with_412(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await logged_in_admin(accounts, client)
    author = await accounts.create()
    post = await create_post(client, author, [])
    path = f"/admin/posts/{post['id']}"
    page = await client.get(path)
    changed = await client.patch(
        f"/api/v1/posts/{post['id']}", json={"title": "Changed"}, headers=author.headers
    )
    assert changed.status_code == 200
    etag = _unescape(re.search(r'name="etag" value="([^"]*)"', page.text).group(1))  # type: ignore[union-attr]
    stale = await client.post(
        path, data={"csrf_token": csrf_of(page), "etag": etag, "title": "Mine", "tags": ""}
    )
    assert stale.status_code == 412
    assert (await client.get(f"/api/v1/posts/{post['id']}")).json()["title"] == "Changed"


async def test_disabling_a_user_ends_their_sessions(client: httpx.AsyncClient, accounts: Accounts) -> None:
    await logged_in_admin(accounts, client)
    user = await accounts.create("To Disable")
    path = f"/admin/users/{user.id}"
    response = await submit(client, path, path, name="To Disable", email=user.email)  # is_active unchecked
    assert response.status_code == 303, response.text
    assert (await client.get("/api/v1/users/me", headers=user.headers)).status_code == 401


async def test_a_password_set_in_the_console_is_hashed_and_logs_in(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    await logged_in_admin(accounts, client)
    user = await accounts.create()
    path = f"/admin/users/{user.id}"
    new_password = "a new password for the console"
    response = await submit(
        client, path, path, name=user.name, email=user.email, is_active="on", password=new_password
    )
    assert response.status_code == 303, response.text
    login = await client.post("/api/v1/auth/token", data={"username": user.email, "password": new_password})
    assert login.status_code == 200
    assert (await client.get("/api/v1/users/me", headers=user.headers)).status_code == 401  # old sessions end
    async with database.engine.connect() as connection:
        stored = await connection.scalar(select(User.password_hash).where(User.id == user.id))
    assert stored is not None
    assert stored.startswith("$argon2id$")


async def test_an_email_taken_by_another_user_is_a_409_page(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await logged_in_admin(accounts, client)
    user = await accounts.create()
    other = await accounts.create()
    path = f"/admin/users/{user.id}"
    response = await submit(client, path, path, name=user.name, email=other.email.upper(), is_active="on")
    assert response.status_code == 409
    assert (await client.get(f"/api/v1/users/{user.id}", headers=user.headers)).json()["email"] == user.email


async def test_deleting_a_user_deletes_their_posts_and_uncounts_their_tags(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await logged_in_admin(accounts, client)
    user = await accounts.create()
    post = await create_post(client, user, ["gone"])
    path = f"/admin/users/{user.id}"
    response = await submit(client, path, f"{path}/delete")
    assert response.status_code == 303, response.text
    assert (await client.get(f"/api/v1/users/{user.id}")).status_code == 404
    assert (await client.get(f"/api/v1/posts/{post['id']}")).status_code == 404
    assert (await client.get("/api/v1/tags")).json()["items"] == []


async def test_deleting_a_post_uncounts_its_tags(client: httpx.AsyncClient, accounts: Accounts) -> None:
    await logged_in_admin(accounts, client)
    author = await accounts.create()
    post = await create_post(client, author, ["one"])
    path = f"/admin/posts/{post['id']}"
    response = await submit(client, path, f"{path}/delete")
    assert response.status_code == 303, response.text
    assert (await client.get(f"/api/v1/posts/{post['id']}")).status_code == 404
    assert (await client.get("/api/v1/tags")).json()["items"] == []


async def test_a_missing_record_is_a_404_page(client: httpx.AsyncClient, accounts: Accounts) -> None:
    await logged_in_admin(accounts, client)
    for path in ("/admin/users/999999", "/admin/posts/999999"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.headers["content-security-policy"] == security.CONTENT_SECURITY_POLICY


async def test_the_tags_and_posts_pages_list_what_the_api_lists(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await logged_in_admin(accounts, client)
    author = await accounts.create()
    post = await create_post(client, author, ["alpha", "beta"])
    tags = await client.get("/admin/tags")
    assert "alpha" in tags.text
    assert "beta" in tags.text
    by_title = await client.get("/admin/posts", params={"q": "post"})
    assert f'href="/admin/posts/{post["id"]}"' in by_title.text
    by_author = await client.get("/admin/posts", params={"author": author.id})
    assert f'href="/admin/posts/{post["id"]}"' in by_author.text
    bad_cursor = await client.get("/admin/posts", params={"cursor": "nonsense"})
    assert bad_cursor.status_code == 422


async def test_hostile_text_in_searches_and_forms_is_refused_without_a_server_error(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await logged_in_admin(accounts, client)
    user = await accounts.create()
    post = await create_post(client, user, [])
    for path, params in (
        ("/admin/users", {"q": "a\x00@example.com"}),
        ("/admin/users", {"q": "x" * 1000}),
        ("/admin/posts", {"q": "\x00"}),
        ("/admin/posts", {"tag": "a\x00"}),
        ("/admin/posts", {"author": "0"}),
    ):
        assert (await client.get(path, params=params)).status_code == 422, (path, params)
    user_path, post_path = f"/admin/users/{user.id}", f"/admin/posts/{post['id']}"
    for page, action, fields in (
        (user_path, user_path, {"name": "nul\x00", "email": user.email}),
        (user_path, user_path, {"name": user.name, "email": "not an email"}),
        (user_path, user_path, {"name": user.name, "email": user.email, "password": "short"}),
        (post_path, post_path, {"title": "", "body": "", "tags": ""}),
        (post_path, post_path, {"title": "t", "body": "\x00", "tags": ""}),
    ):
        response = await submit(client, page, action, **fields)
        assert response.status_code == 422, (action, fields, response.text)
    assert (await client.get(f"/api/v1/users/{user.id}", headers=user.headers)).json()["name"] == user.name
    for path in ("/admin/users/0", "/admin/posts/99999999999999999999"):
        assert (await client.get(path)).status_code == 422


async def test_an_admin_disabled_while_logged_in_is_sent_back_to_the_login_form(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    admin = await logged_in_admin(accounts, client)
    other_admin = await accounts.create(admin=True)
    disabled = await client.patch(
        f"/api/v1/users/{admin.id}", json={"is_active": False}, headers=other_admin.headers
    )
    assert disabled.status_code == 200, disabled.text
    response = await client.get("/admin/users")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/login"


async def test_changing_ones_own_email_after_the_recent_login_window_needs_the_current_password(
    client: httpx.AsyncClient, accounts: Accounts, app_and_client: tuple[Any, httpx.AsyncClient]
) -> None:
    admin = await logged_in_admin(accounts, client)
    app_and_client[0].state.settings.recent_login_minutes = 0  # every login is too old now
    path = f"/admin/users/{admin.id}"
    fields = {"name": admin.name, "email": "renamed@example.com", "is_active": "on"}
    without = await submit(client, path, path, **fields)
    assert without.status_code == 403
    assert "current_password" in without.text
    wrong = await submit(client, path, path, **fields, current_password="not it")
    assert wrong.status_code == 403
    right = await submit(client, path, path, **fields, current_password=PASSWORD)
    assert right.status_code == 303, right.text
    me = await client.get(f"/api/v1/users/{admin.id}", headers=admin.headers)
    assert me.json()["email"] == "renamed@example.com"


async def test_text_from_users_is_escaped_in_the_pages(client: httpx.AsyncClient, accounts: Accounts) -> None:
    await logged_in_admin(accounts, client)
    user = await accounts.create('<img src=x onerror="alert(1)">')
    post = await create_post(client, user, [])
    for path in ("/admin/users", f"/admin/users/{user.id}", "/admin/posts", f"/admin/posts/{post['id']}"):
        page = await client.get(path)
        assert "<img" not in page.text, path
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page.text, path


async def test_the_lists_page_on_with_the_apis_cursors(
    client: httpx.AsyncClient, accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("blogapi.admin.router.PAGE_SIZE", 2)
    await logged_in_admin(accounts, client)
    author = await accounts.create()
    await accounts.create()
    for _ in range(3):
        await create_post(client, author, [])
    author_query = f"/admin/posts?author={author.id}"
    for path, query in (
        ("/admin/users", "/admin/users"),
        ("/admin/posts", "/admin/posts"),
        ("/admin/posts", author_query),
    ):
        first = await client.get(query)
        rows = re.findall(rf'<td><a href="({path}/\d+)">', first.text)
        assert len(rows) == 2, first.text
        next_link = re.search(r'<a href="([^"]+)">Next page</a>', first.text)
        assert next_link is not None, first.text
        second = await client.get(next_link.group(1).replace("&amp;", "&"))
        assert second.status_code == 200, second.text
        rows += re.findall(rf'<td><a href="({path}/\d+)">', second.text)
        assert len(set(rows)) == 3, rows
        assert "Next page" not in second.text
        assert query == path or f"author={author.id}" in next_link.group(1)
