"""The admin console in a real browser: headless Chromium against `blogapi serve`, per backend.

An admin logs in, finds a user and promotes them, edits a post's tags; the API then shows
the changes. A non-admin is refused, and so is a form another site's page posts to the
console. The browser reaches only the app (and, for the forged form, the other site): every
other request is blocked and recorded, and so is every Content-Security-Policy violation.
A screenshot of each step is kept under .cache/test-artifacts/admin/<backend>/.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import PASSWORD, TEST_SECRET, backend_of, database_env
from playwright.async_api import Browser, BrowserContext, Page, Request, Route, async_playwright

from blogapi.admin import security
from blogapi.config import Settings
from blogapi.db import Database
from blogapi.users import service as users_service
from blogapi.users.schemas import UserCreate

HOST = "blogapi.test"
EVIL_HOST = "evil.test"
TIMEOUT_MS = 60_000  # Chromium on two busy cores is slow; content is asserted at once
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    f"--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP {EVIL_HOST} 127.0.0.1",
]
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
    window.__cspViolations.push([event.effectiveDirective, event.blockedURI]);
});
"""
REPOSITORY = Path(__file__).resolve().parent.parent
ARTIFACTS = REPOSITORY / ".cache" / "test-artifacts" / "admin"
ADMIN_EMAIL = "admin@example.com"
USER_EMAIL = "reader@example.com"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_ready(client: httpx.Client, server: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(240):
        assert server.poll() is None, f"the server exited:\n{log.read_text()}"
        try:
            if client.get("/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the server never became ready:\n{log.read_text()}")


@dataclass
class Server:
    origin: str
    api: httpx.Client


@pytest.fixture
def server(database_url: str, database: Database, tmp_path: Path) -> Iterator[Server]:
    """`blogapi serve` with the console on, on the backend's test database (emptied afterwards
    by the `database` fixture)."""
    port = _free_port()
    log_path = tmp_path / "server.log"
    env = os.environ | database_env(database_url)
    env |= {
        "ADMIN_ENABLED": "true",
        "ENVIRONMENT": "test",
        "SECRET_KEY": TEST_SECRET,
        "DATA_DIR": str(tmp_path),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [Path(sys.executable).with_name("blogapi"), "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            _wait_until_ready(api, process, log_path)
            yield Server(f"http://{HOST}:{port}", api)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    assert b"Traceback" not in log_path.read_bytes(), log_path.read_text()


class _ForgedForm(BaseHTTPRequestHandler):
    """Another site's page: it posts a form to the console as soon as it loads."""

    target = ""

    def do_GET(self) -> None:
        page = (
            f'<!doctype html><form method="post" action="{self.target}">'
            '<input type="hidden" name="is_admin" value="true">'
            '<input type="hidden" name="csrf_token" value="guessed">'
            "</form><script>document.forms[0].submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def evil_site() -> Iterator[str]:
    """The origin of another site (http://evil.test:<port>), serving `_ForgedForm`."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ForgedForm)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{EVIL_HOST}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@dataclass
class Session:
    """A browser context that reaches only the allowed origins, and what it tried beyond them."""

    context: BrowserContext
    shots: Path
    blocked: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    async def screenshot(self, page: Page, step: str) -> None:
        """Numbered in order across the test's browser sessions."""
        path = self.shots / f"{len(list(self.shots.glob('*.png'))) + 1:02d}-{step}.png"
        await page.screenshot(path=path, full_page=True)
        print(f"screenshot: {path}")


async def _session(browser: Browser, allowed: list[str], shots: Path) -> Session:
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    session = Session(context, shots)

    async def only_allowed(route: Route, request: Request) -> None:
        if any(request.url.startswith(f"{origin}/") for origin in allowed):
            await route.continue_()
        else:
            session.blocked.append(request.url)
            await route.abort("internetdisconnected")

    await context.route("**/*", only_allowed)
    await context.add_init_script(RECORD_CSP_VIOLATIONS)
    return session


async def _csp_violations(page: Page) -> list[list[str]]:
    violations: list[list[str]] = await page.evaluate("window.__cspViolations")
    return violations


async def _log_in(page: Page, origin: str, email: str) -> int:
    """Fill the login form; the status of the answer to its POST."""
    await page.goto(f"{origin}/admin/login")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    async with page.expect_response(lambda response: response.url == f"{origin}/admin/login") as posted:
        await page.get_by_role("button", name="Log in").click()
    status: int = (await posted.value).status
    await page.wait_for_load_state()
    return status


def _version(etag: str) -> int:
    """The post's own version, from its ETag (`"<post version>.<author version>"`)."""
    match = re.fullmatch(r'"(\d+)\.\d+"', etag)
    assert match is not None, etag
    return int(match.group(1))


async def test_an_admin_promotes_a_user_and_retags_a_post_and_forged_or_non_admin_requests_are_refused(
    browser: Browser,
    server: Server,
    evil_site: str,
    database: Database,
    settings: Settings,
    database_url: str,
) -> None:
    origin, api = server.origin, server.api
    shots = ARTIFACTS / backend_of(database_url)
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()
    async with database.sessionmaker.begin() as db:
        await users_service.create_user(
            db, UserCreate(name="Ada Admin", email=ADMIN_EMAIL, password=PASSWORD), settings, is_admin=True
        )
    reader = api.post(
        "/api/v1/users", json={"name": "Rita Reader", "email": USER_EMAIL, "password": PASSWORD}
    )
    assert reader.status_code == 201, reader.text
    reader_id = reader.json()["id"]
    victim = api.post(
        "/api/v1/users", json={"name": "Vic Tim", "email": "vic@example.com", "password": PASSWORD}
    )
    assert victim.status_code == 201, victim.text
    token = api.post("/api/v1/auth/token", data={"username": USER_EMAIL, "password": PASSWORD}).json()
    created = api.post(
        "/api/v1/posts",
        json={"title": "Browser post", "body": "hello", "tags": ["old"]},
        headers={"Authorization": f"Bearer {token['access_token']}"},
    )
    assert created.status_code == 201, created.text
    post_id = created.json()["id"]
    etag_before = api.get(f"/api/v1/posts/{post_id}").headers["etag"]

    # A non-admin, with the right password, is refused.
    outsider = await _session(browser, [origin], shots)
    page = await outsider.context.new_page()
    page.on("pageerror", lambda error: outsider.page_errors.append(str(error)))
    assert await _log_in(page, origin, USER_EMAIL) == 403
    await page.get_by_role("alert").wait_for()
    assert await page.get_by_role("alert").inner_text() == "this account is not an admin"
    await outsider.screenshot(page, "non-admin-refused")
    await page.goto(f"{origin}/admin/users")
    assert page.url == f"{origin}/admin/login"  # no session was started
    assert await _csp_violations(page) == []
    await outsider.context.close()
    assert outsider.blocked == []
    assert outsider.page_errors == []

    # An admin logs in, finds the user by name and promotes them.
    admin = await _session(browser, [origin, evil_site], shots)
    page = await admin.context.new_page()
    page.on("pageerror", lambda error: admin.page_errors.append(str(error)))
    assert await _log_in(page, origin, ADMIN_EMAIL) == 303
    await page.get_by_role("heading", name="Users").wait_for()
    assert page.url == f"{origin}/admin/users"
    await admin.screenshot(page, "logged-in")
    cookies = {cookie["name"]: cookie for cookie in await admin.context.cookies(page.url)}
    assert set(cookies) == {security.SESSION_COOKIE, security.CSRF_COOKIE}
    assert {cookie["sameSite"] for cookie in cookies.values()} == {"Strict"}
    assert all(cookie["httpOnly"] for cookie in cookies.values())
    assert await page.evaluate("document.cookie") == ""  # no script could read the session
    await page.get_by_label("Name or email").fill("rita")
    # Every user is listed before the search too: wait for the search's own page.
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_url(f"{origin}/admin/users?q=rita")
    await page.get_by_role("link", name="Rita Reader").wait_for()
    assert await page.locator("tbody tr").count() == 1
    await admin.screenshot(page, "user-found")
    await page.get_by_role("link", name="Rita Reader").click()
    await page.get_by_role("button", name="Promote to admin").click()
    await page.get_by_role("status").wait_for()
    assert await page.get_by_role("status").inner_text() == "Saved."
    assert await page.get_by_role("button", name="Remove admin rights").count() == 1
    await admin.screenshot(page, "user-promoted")
    assert api.get(f"/api/v1/users/{reader_id}").json()["is_admin"] is True

    # The post's tags, edited: normalised and its version moved on, as through the API.
    await page.get_by_role("link", name="Posts", exact=True).click()
    await page.get_by_label("Title").fill("browser")
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_url(f"{origin}/admin/posts?q=browser&tag=")
    await page.get_by_role("link", name="Browser post").click()
    await page.get_by_label("Tags (separated by commas or spaces)").fill("Python, FastAPI python  Ünïcode")
    await page.get_by_role("button", name="Save").click()
    await page.get_by_role("status").wait_for()
    assert await page.locator(".tags").inner_text() == "fastapi, python, ünïcode"
    await admin.screenshot(page, "post-retagged")
    post = api.get(f"/api/v1/posts/{post_id}")
    assert post.json()["tags"] == ["fastapi", "python", "ünïcode"]
    assert _version(post.headers["etag"]) == _version(etag_before) + 1

    # Another site's page posts a form to the console while the admin is logged in.
    refused = await admin.context.new_page()
    refused.on("pageerror", lambda error: admin.page_errors.append(str(error)))
    _ForgedForm.target = f"{origin}/admin/users/{victim.json()['id']}/admin"
    async with refused.expect_response(lambda response: response.url == _ForgedForm.target) as forged:
        await refused.goto(f"{evil_site}/")
    assert (await forged.value).status == 403
    await refused.get_by_role("alert").wait_for()
    assert "refused" in await refused.get_by_role("alert").inner_text()
    await admin.screenshot(refused, "forged-form-refused")
    assert api.get(f"/api/v1/users/{victim.json()['id']}").json()["is_admin"] is False

    assert await _csp_violations(page) == []
    await admin.context.close()
    assert admin.blocked == []
    assert admin.page_errors == []
