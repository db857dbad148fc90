"""The application as a whole: its OpenAPI document, error rendering, health and settings."""

from __future__ import annotations

import base64
import hashlib
import importlib
import logging
import re
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from conftest import TEST_SECRET, serving
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.middleware.base import BaseHTTPMiddleware

from blogapi.config import Environment, Settings
from blogapi.main import create_app

PROBLEM = "application/problem+json"


async def test_the_openapi_document_and_swagger_ui_are_served(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert "/api/v1/posts/{post_id}" in document["paths"]
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


DOCS_PAGES = ("/docs", "/redoc", "/docs/oauth2-redirect")
SAME_ORIGIN_SOURCE = re.compile(r"'(self|none|unsafe-inline|sha256-[A-Za-z0-9+/=]+)'|data:|blob:")


@pytest.mark.backends("sqlite")
async def test_the_docs_pages_load_their_scripts_and_styles_from_the_app_not_a_cdn(
    client: httpx.AsyncClient,
) -> None:
    for page in ("/docs", "/redoc"):
        html = (await client.get(page)).text
        urls = re.findall(r'(?:src|href)="([^"]*)"', html)
        assert any(url.endswith(".js") for url in urls), (page, urls)
        for url in urls:
            assert url.startswith("/docs/assets/"), (page, url)
            asset = await client.get(url)
            assert asset.status_code == 200, (page, url)
            assert asset.content


@pytest.mark.backends("sqlite")
async def test_the_docs_pages_behind_a_path_prefix_load_everything_under_it(settings: Settings) -> None:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, root_path="/blog")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        swagger_ui = (await client.get("/blog/docs")).text
        redoc = (await client.get("/blog/redoc")).text
        asset = await client.get("/blog/docs/assets/swagger-ui.css")
    assert "url: '/blog/openapi.json'" in swagger_ui
    assert "oauth2RedirectUrl: window.location.origin + '/blog/docs/oauth2-redirect'" in swagger_ui
    assert 'spec-url="/blog/openapi.json"' in redoc
    for html in (swagger_ui, redoc):
        assert all(
            url.startswith("/blog/docs/assets/") for url in re.findall(r'(?:src|href)="([^"]*)"', html)
        )
    assert asset.status_code == 200


@pytest.mark.backends("sqlite")
async def test_the_docs_pages_may_load_nothing_from_another_origin(client: httpx.AsyncClient) -> None:
    for page in DOCS_PAGES:
        response = await client.get(page)
        assert response.status_code == 200
        policy = response.headers["content-security-policy"]
        directives = dict(directive.strip().split(" ", 1) for directive in policy.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["frame-ancestors"] == "'none'"
        for sources in directives.values():
            for source in sources.split():
                assert SAME_ORIGIN_SOURCE.fullmatch(source), (page, source)
        # Each inline script is allowed by its hash: no 'unsafe-inline' scripts.
        inline_scripts = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
        for script in inline_scripts:
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in directives["script-src"], page


@pytest.mark.backends("sqlite")
async def test_the_docs_pages_and_their_assets_are_not_in_the_openapi_document(
    app_and_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = app_and_client
    docs_routes = {*DOCS_PAGES, "/docs/assets/{name}"}
    assert docs_routes <= {getattr(route, "path", None) for route in app.routes}
    document = (await client.get("/openapi.json")).json()
    assert docs_routes & set(document["paths"]) == set()


@pytest.mark.backends("sqlite")
async def test_a_docs_asset_answers_other_methods_405_allowing_get_and_head(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/docs/assets/swagger-ui.css")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["allow"] == "GET, HEAD"
    assert (await client.head("/docs/assets/swagger-ui.css")).status_code == 200


@pytest.mark.backends("sqlite")
async def test_an_unknown_docs_asset_is_a_404_problem(client: httpx.AsyncClient) -> None:
    for name in ("nothing.js", "..%2F..%2Fdocs.py", "%2E%2E"):
        response = await client.get(f"/docs/assets/{name}")
        assert response.status_code == 404, name
        assert response.headers["content-type"] == PROBLEM


def _declared(document: dict[str, Any], path: str, method: str) -> set[int]:
    return {int(status) for status in document["paths"][path][method]["responses"]}


async def test_every_error_a_route_can_return_is_declared_as_problem_json(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    expected = {
        ("/api/v1/users", "post"): {201, 409, 413, 422},
        ("/api/v1/auth/token", "post"): {200, 401, 413, 422},
        ("/api/v1/users/me", "get"): {200, 401},
        ("/api/v1/users/{user_id}", "patch"): {200, 401, 403, 404, 409, 413, 422},
        ("/api/v1/users/{user_id}", "delete"): {204, 401, 403, 404, 422},
        ("/api/v1/posts", "post"): {201, 401, 413, 422},
        ("/api/v1/posts/{post_id}", "get"): {200, 404, 422},
        ("/api/v1/posts/{post_id}", "patch"): {200, 401, 403, 404, 413, 422},
        ("/api/v1/posts/{post_id}", "delete"): {204, 401, 403, 404, 422},
        ("/health/ready", "get"): {200, 503},
    }
    for (path, method), statuses in expected.items():
        assert statuses <= _declared(document, path, method), (path, method)
    for path_item in document["paths"].values():
        for operation in path_item.values():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == [PROBLEM], (operation["operationId"], status)


async def test_an_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == 404


async def test_a_wrong_method_is_a_405_problem_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.put("/api/v1/posts")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM
    assert "GET" in response.headers["allow"]


async def test_an_unexpected_error_is_a_generic_500_that_leaks_nothing_and_is_logged(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom SELECT secret FROM vault")

    async with serving(app, raise_app_exceptions=False) as client:
        with caplog.at_level(logging.ERROR, logger="blogapi.errors"):
            response = await client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    for leaked in ("boom", "SELECT", "secret", "Traceback"):
        assert leaked not in response.text
    assert any(
        "boom SELECT secret" in str(record.exc_info[1]) for record in caplog.records if record.exc_info
    )


async def test_health_live_answers_without_the_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_health_ready_runs_a_query(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def _unreachable_database_app() -> FastAPI:
    settings = Settings(
        database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none",
        secret_key=TEST_SECRET,
        environment=Environment.TEST,
        _env_file=None,
    )
    return create_app(settings)


async def test_health_ready_is_503_with_retry_after_when_the_database_is_unreachable() -> None:
    async with serving(_unreachable_database_app()) as client:
        response = await client.get("/health/ready")
        live = await client.get("/health/live")
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["retry-after"].isdigit()
    assert live.status_code == 200


async def test_a_database_outage_during_a_request_is_a_503_not_a_500() -> None:
    async with serving(_unreachable_database_app()) as client:
        response = await client.get("/api/v1/posts")
    assert response.status_code == 503
    assert "retry-after" in response.headers


def test_cors_origins_are_read_as_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    assert Settings(_env_file=None).cors_origins == ["https://a.example", "https://b.example"]


async def test_cors_allows_only_the_configured_origins(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"cors_origins": ["https://app.example"]}))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            preflight = {"Access-Control-Request-Method": "POST"}
            allowed = await client.options(
                "/api/v1/posts", headers={"Origin": "https://app.example", **preflight}
            )
            refused = await client.options(
                "/api/v1/posts", headers={"Origin": "https://evil.example", **preflight}
            )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in refused.headers


def test_no_middleware_is_a_base_http_middleware(settings: Settings) -> None:
    app = create_app(settings)
    for middleware in app.user_middleware:
        assert not (isinstance(middleware.cls, type) and issubclass(middleware.cls, BaseHTTPMiddleware))


def test_every_api_route_is_in_the_openapi_document(settings: Settings) -> None:
    app = create_app(settings)
    documented = {(path, method.upper()) for path, item in app.openapi()["paths"].items() for method in item}
    api_routes = [
        context
        for context in iter_route_contexts(app.routes)
        if (context.path or "").startswith(("/api", "/health"))
    ]
    assert len(api_routes) >= 16
    for context in api_routes:
        for method in context.methods or ():
            # path_format drops convertors: /users/{user_id:user_id} is /users/{user_id}.
            assert (context.path_format, method) in documented


def test_the_pyproject_entrypoint_names_the_app_for_fastapi_run() -> None:
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    module_name, _, attribute = pyproject["tool"]["fastapi"]["entrypoint"].partition(":")
    assert isinstance(getattr(importlib.import_module(module_name), attribute), FastAPI)
