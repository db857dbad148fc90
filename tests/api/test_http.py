"""HTTP itself: HEAD, Allow, nosniff, no redirect off the Host header, CORS for the API's own headers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import Accounts, assert_problem, serving
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from blogapi.config import Settings
from blogapi.db import Database
from blogapi.errors import ProblemType
from blogapi.main import REQUEST_HEADERS, RESPONSE_HEADERS, create_app

API = "/api/v1"
ORIGIN = "https://app.example"


# --- HEAD and Allow ---------------------------------------------------------------------------------


def get_paths(app: FastAPI, ids: dict[str, int | str]) -> list[str]:
    """Every GET route of the app, its path parameters filled in."""
    return [
        re.sub(r"\{(\w+)(:\w+)?\}", lambda match: str(ids[match.group(1)]), context.path)
        for context in iter_route_contexts(app.routes)
        if context.path and "GET" in (context.methods or ())
    ]


async def test_head_on_every_get_route_has_the_get_headers_and_no_body(
    app_and_client: tuple[FastAPI, httpx.AsyncClient], accounts: Accounts
) -> None:
    app, client = app_and_client
    ann = await accounts.create()
    created = await client.post(f"{API}/posts", json={"title": "t", "tags": ["x"]}, headers=ann.headers)
    paths = get_paths(app, {"post_id": created.json()["id"], "user_id": ann.id, "name": "swagger-ui.css"})
    assert "/health/live" in paths
    assert f"{API}/posts/{created.json()['id']}" in paths
    for path in paths:
        get = await client.get(path, headers=ann.headers)
        head = await client.head(path, headers=ann.headers)
        assert get.status_code == 200, (path, get.text)
        assert head.status_code == 200, path
        assert head.content == b"", path
        for name in ("content-length", "content-type", "etag"):
            assert head.headers.get(name) == get.headers.get(name), (path, name)
    assert "etag" in (await client.head(f"{API}/posts/{created.json()['id']}")).headers


async def test_head_of_a_missing_post_is_404_without_a_body(client: httpx.AsyncClient) -> None:
    response = await client.head(f"{API}/posts/999999")
    assert response.status_code == 404
    assert response.content == b""


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/health/live", "GET, HEAD"),
        ("PUT", f"{API}/posts", "GET, HEAD, POST"),
        ("PUT", f"{API}/posts/1", "DELETE, GET, HEAD, PATCH"),
        ("HEAD", f"{API}/auth/token", "POST"),
    ],
)
async def test_a_405_lists_head_wherever_get_is_allowed(
    client: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed


# --- X-Content-Type-Options -------------------------------------------------------------------------


async def test_every_kind_of_response_carries_nosniff(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    ann = await accounts.create()
    created = await client.post(f"{API}/posts", json={"title": "t"}, headers=ann.headers)
    post = f"{API}/posts/{created.json()['id']}"
    too_large = b"x" * (settings.max_body_bytes + 1)
    responses = [
        (201, created),
        (200, await client.get(post)),
        (304, await client.get(post, headers={"If-None-Match": created.headers["etag"]})),
        (200, await client.head(post)),
        (401, await client.get(f"{API}/users/me")),
        (401, await client.post(f"{API}/auth/token", data={"username": ann.email, "password": "wrong"})),
        (404, await client.get(f"{API}/nothing")),
        (405, await client.put(post)),
        (413, await client.post(f"{API}/posts", content=too_large, headers=ann.headers)),
        (422, await client.post(f"{API}/posts", json={}, headers=ann.headers)),
        (204, await client.delete(post, headers=ann.headers)),
    ]
    for status, response in responses:
        assert response.status_code == status, response.text
        assert response.headers["x-content-type-options"] == "nosniff", response.request


async def test_an_unexpected_error_carries_nosniff_too(settings: Settings, database: Database) -> None:
    app = create_app(settings, database)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    async with serving(app, raise_app_exceptions=False) as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert response.headers["x-content-type-options"] == "nosniff"


# --- trailing slashes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("GET", f"{API}/posts/"), ("POST", f"{API}/users/")])
async def test_a_trailing_slash_is_404_and_never_a_redirect_to_the_host_header(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path, headers={"Host": "evil.example"}, json={})
    assert_problem(response, 404)
    assert "location" not in response.headers


# --- CORS ----------------------------------------------------------------------------------------------


@pytest.fixture
async def cors_client(settings: Settings, database: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"cors_origins": [ORIGIN]}), database)
    async with serving(app) as client:
        yield client


def preflight(method: str, headers: str | None = None, origin: str = ORIGIN) -> dict[str, str]:
    request = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        request["Access-Control-Request-Headers"] = headers
    return request


def listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("PATCH", "if-match, content-type, authorization"),
        ("DELETE", "if-match, authorization"),
        ("POST", "idempotency-key, content-type, authorization"),
        ("GET", "if-none-match"),
    ],
)
async def test_a_preflight_for_the_apis_own_request_headers_is_allowed(
    cors_client: httpx.AsyncClient, method: str, headers: str
) -> None:
    response = await cors_client.options(f"{API}/posts/1", headers=preflight(method, headers))
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert listed(headers) <= listed(response.headers["access-control-allow-headers"])
    assert method.lower() in listed(response.headers["access-control-allow-methods"])


async def test_a_page_can_read_every_response_header_the_api_defines(
    cors_client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    created = await cors_client.post(
        f"{API}/posts",
        json={"title": "t"},
        headers={**ann.headers, "Origin": ORIGIN, "Idempotency-Key": "k-1"},
    )
    replayed = await cors_client.post(
        f"{API}/posts",
        json={"title": "t"},
        headers={**ann.headers, "Origin": ORIGIN, "Idempotency-Key": "k-1"},
    )
    assert replayed.headers["idempotent-replayed"] == "true"
    exposed = listed(created.headers["access-control-expose-headers"])
    assert {"etag", "location", "retry-after", "idempotent-replayed", "www-authenticate"} <= exposed


async def test_the_cors_lists_cover_every_header_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    sent = {
        parameter["name"].lower()
        for path_item in document["paths"].values()
        for operation in path_item.values()
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "header"
    }
    answered = {
        name.lower()
        for path_item in document["paths"].values()
        for operation in path_item.values()
        for response in operation["responses"].values()
        for name in response.get("headers", {})
    }
    assert {"if-match", "if-none-match", "idempotency-key"} <= sent
    assert {"etag", "location"} <= answered
    assert sent <= {name.lower() for name in REQUEST_HEADERS}
    assert answered <= {name.lower() for name in RESPONSE_HEADERS}


@pytest.mark.parametrize(
    ("request_headers", "refused"),
    [
        (preflight("PATCH", "x-unknown"), "headers"),
        (preflight("PUT"), "method"),
        (preflight("GET", origin="https://evil.example"), "origin"),
    ],
    ids=["header", "method", "origin"],
)
async def test_a_refused_preflight_is_a_400_problem(
    cors_client: httpx.AsyncClient, request_headers: dict[str, str], refused: str
) -> None:
    response = await cors_client.options(f"{API}/posts/1", headers=request_headers)
    problem = assert_problem(response, 400)
    assert problem["type"] == ProblemType.CORS_REFUSED
    assert problem["detail"] == f"disallowed CORS {refused}"
    if refused == "origin":
        assert "access-control-allow-origin" not in response.headers
