"""/docs and /redoc in a real browser, offline: headless Chromium against `blogapi serve`.

Every request the pages make to another origin is blocked and recorded, and so is every
Content-Security-Policy violation: the pages must render and work with none. The browser
opens the app under a name that is not localhost, as a deployment would be (Chromium maps
it to 127.0.0.1): Swagger UI treats localhost specially (no validator badge).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import PASSWORD, database_env, upgrade
from playwright.async_api import Browser, BrowserContext, Page, Request, Route, async_playwright

HOST = "blogapi.test"
EMAIL = "docs@example.com"
ME_PATH = "/api/v1/users/me"
TOKEN_PATH = "/api/v1/auth/token"
# Generous: headless Chromium on two busy cores is slow. Each wait is for a page's
# structure; what it shows is asserted as soon as it is there, so wrong content fails fast.
TIMEOUT_MS = 60_000
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
    f"--host-resolver-rules=MAP {HOST} 127.0.0.1",
]
# ReDoc's "API docs by Redocly" footer shows a logo from its CDN, whatever its options; the
# page's CSP blocks it and ReDoc hides an image that fails to load.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
    window.__cspViolations.push([event.effectiveDirective, event.blockedURI]);
});
"""
REPOSITORY = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`blogapi serve` on a migrated SQLite file, with a user signed up; its origin for the browser."""
    directory = tmp_path_factory.mktemp("docs")
    database_url = f"sqlite+aiosqlite:///{directory / 'docs.db'}"
    upgrade(database_url)
    port = _free_port()
    log_path = directory / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [Path(sys.executable).with_name("blogapi"), "serve", "--port", str(port)],
            env=os.environ | database_env(database_url) | {"ENVIRONMENT": "development"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            _wait_until_ready(client, server, log_path)
            signup = client.post(
                "/api/v1/users", json={"name": "Docs Reader", "email": EMAIL, "password": PASSWORD}
            )
            assert signup.status_code == 201, signup.text
        yield f"http://{HOST}:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert b"Traceback" not in log_path.read_bytes(), log_path.read_text()


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


@pytest.fixture(scope="module")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@dataclass
class Offline:
    """A browser context that reaches only the app, and what it tried beyond it."""

    context: BrowserContext
    blocked: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    async def open(self, url: str) -> Page:
        page = await self.context.new_page()
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        await page.goto(url)
        # The page's own scripts and styles have loaded (or been refused) by now: fail fast.
        assert self.blocked == []
        return page


@pytest.fixture
async def offline(browser: Browser, origin: str) -> AsyncIterator[Offline]:
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    offline = Offline(context)

    async def only_the_app(route: Route, request: Request) -> None:
        if request.url.startswith(f"{origin}/"):
            await route.continue_()
        else:
            offline.blocked.append(request.url)
            await route.abort("internetdisconnected")

    await context.route("**/*", only_the_app)
    await context.add_init_script(RECORD_CSP_VIOLATIONS)
    yield offline
    await context.close()


async def _csp_violations(page: Page) -> set[tuple[str, str]]:
    violations: list[list[str]] = await page.evaluate("window.__cspViolations")
    return {(directive, uri) for directive, uri in violations}


async def test_swagger_ui_renders_offline_and_authorizes_through_the_password_flow(
    offline: Offline, origin: str
) -> None:
    page = await offline.open(f"{origin}/docs")

    await page.locator(".swagger-ui .opblock").first.wait_for()
    assert await page.title() == "blogapi - Swagger UI"
    title = await page.locator(".swagger-ui .info .title").text_content()
    assert title is not None
    assert title.startswith("blogapi")
    # Found by its path, whatever its operation id or summary.
    me = page.locator(".opblock-get").filter(
        has=page.locator(f'.opblock-summary-path[data-path="{ME_PATH}"]')
    )
    assert await me.count() == 1

    # The scheme the document declares for the password flow, whatever its name.
    document = await page.evaluate("fetch('/openapi.json').then((response) => response.json())")
    (scheme,) = [
        name
        for name, declared in document["components"]["securitySchemes"].items()
        if declared.get("flows", {}).get("password", {}).get("tokenUrl") == TOKEN_PATH
    ]
    await page.locator(".auth-wrapper .authorize").click()
    dialog = page.locator(".modal-ux .auth-container").filter(has=page.locator("h4", has_text=scheme))
    await dialog.locator("#oauth_username").fill(EMAIL)
    await dialog.locator("#oauth_password").fill(PASSWORD)
    async with page.expect_response(lambda response: response.url == f"{origin}{TOKEN_PATH}") as token:
        await dialog.get_by_role("button", name="Apply given OAuth2 credentials").click()
    assert (await token.value).status == 200
    await dialog.locator("h6, .errors").first.wait_for()
    assert await dialog.locator(".errors").count() == 0, await dialog.inner_text()
    assert await dialog.locator("h6").inner_text() == "Authorized"
    await page.locator(".modal-ux .btn-done").first.click()

    await me.locator(".opblock-summary").click()
    await me.locator(".try-out__btn").click()
    async with page.expect_response(lambda response: response.url == f"{origin}{ME_PATH}") as answer:
        await me.locator(".execute").click()
    response = await answer.value
    assert response.status == 200, await response.text()
    assert (await response.json())["email"] == EMAIL
    shown = me.locator(".live-responses-table tbody")
    await shown.locator(".response-col_status").wait_for()
    assert await shown.locator(".response-col_status").inner_text() == "200"
    await shown.locator(".response-col_description .highlight-code").get_by_text(f'"{EMAIL}"').wait_for()

    assert await _csp_violations(page) == set()
    assert offline.blocked == []
    assert offline.page_errors == []


async def test_redoc_renders_offline(offline: Offline, origin: str) -> None:
    page = await offline.open(f"{origin}/redoc")

    heading = page.locator(".api-info h1")
    await heading.wait_for()
    assert await page.title() == "blogapi - ReDoc"
    assert (await heading.inner_text()).startswith("blogapi")
    await page.locator(".menu-content [role=menuitem]").first.wait_for()
    assert await page.get_by_text(ME_PATH, exact=True).count() >= 1

    assert await _csp_violations(page) <= {("img-src", REDOC_LOGO)}
    assert offline.blocked == []
    assert offline.page_errors == []


@pytest.mark.parametrize(
    ("require", "exit_code", "reported"),
    [
        ("", 0, "SKIPPED browser tests: no Chromium at /nonexistent/chromium"),
        ("chromium", 1, "required browser missing: no Chromium at /nonexistent/chromium"),
    ],
)
def test_without_chromium_the_browser_tests_skip_with_the_reason_unless_it_is_required(
    require: str, exit_code: int, reported: str
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-p", "no:cacheprovider", "-k", "test_redoc"],
        cwd=REPOSITORY,
        env=os.environ | {"BLOGAPI_TEST_CHROMIUM": "/nonexistent/chromium", "BLOGAPI_TEST_REQUIRE": require},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == exit_code, run.stdout + run.stderr
    assert reported in run.stdout, run.stdout


def test_make_browser_leaves_an_installed_chromium_alone(chromium: str) -> None:
    run = subprocess.run(
        ["make", "--no-print-directory", "browser", f"CHROMIUM={chromium}"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "installing" not in run.stdout


def test_make_browser_without_root_says_how_to_install_chromium() -> None:
    command = ["make", "--no-print-directory", "browser", "CHROMIUM=/nonexistent/chromium"]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    run = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode != 0
    assert "sudo apt-get install chromium" in run.stderr
    assert "installing" not in run.stdout
