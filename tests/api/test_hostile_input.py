"""Hostile input is a 4xx problem, never a 5xx, never stored, never echoed (PITFALLS C3-C5, D6, D9).

Each write route (sign-up, changing a user, publishing and changing a post) is sent bytes a
client should not send: NUL, lone surrogates, invalid UTF-8, broken or deeply nested JSON,
huge numbers and wrong types. Ids and query parameters get out-of-range values. The body
limit is checked at the ASGI level, where a test can see how much of the body the app read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from conftest import PASSWORD, Account, Accounts, assert_problem

from blogapi.config import Settings
from blogapi.db import Database
from blogapi.main import create_app

API = "/api/v1"
PROBLEM = "application/problem+json"
SECRET = "Sup3r-S3cret-XYZ"


# --- targets and helpers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A write route, the text field it takes, and how to make a valid body for it."""

    name: str
    method: str
    path: str
    text_field: str
    anonymous: bool = False

    def valid(self, serial: int) -> dict[str, Any]:
        if self.path == f"{API}/users":
            return {"name": "Nia", "email": f"nia{serial}@example.com", "password": PASSWORD}
        return {self.text_field: f"valid {serial}"}


TARGETS = [
    Target("create-post", "POST", f"{API}/posts", "title"),
    Target("update-post", "PATCH", f"{API}/posts/{{post_id}}", "title"),
    Target("sign-up", "POST", f"{API}/users", "name", anonymous=True),
    Target("update-user", "PATCH", f"{API}/users/{{user_id}}", "name"),
]
POST_TARGETS = [target for target in TARGETS if "posts" in target.path]
USER_TARGETS = [target for target in TARGETS if "users" in target.path]
SUCCESS = {"POST": 201, "PATCH": 200}


def target_ids(target: Target) -> str:
    return target.name


@dataclass
class Subject:
    """An owner with one post; sends raw requests to a target as the owner (or anonymously)."""

    client: httpx.AsyncClient
    owner: Account
    post_id: int
    serial: int = 0

    def url(self, target: Target) -> str:
        return target.path.format(post_id=self.post_id, user_id=self.owner.id)

    def headers(self, target: Target, content_type: str | None = "application/json") -> dict[str, str]:
        headers = {} if target.anonymous else dict(self.owner.headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        return headers

    async def send(
        self, target: Target, content: bytes, content_type: str | None = "application/json"
    ) -> httpx.Response:
        return await self.client.request(
            target.method, self.url(target), content=content, headers=self.headers(target, content_type)
        )

    async def send_json(self, target: Target, payload: Any) -> httpx.Response:
        return await self.send(target, json.dumps(payload).encode())

    async def send_with(self, target: Target, field: str, raw_value: str) -> httpx.Response:
        """A valid body whose `field` is `raw_value`, spliced in as raw JSON text."""
        payload = {**self.valid(target), field: "@PLACEHOLDER@"}
        raw = json.dumps(payload).replace('"@PLACEHOLDER@"', raw_value)
        assert raw_value in raw
        return await self.send(target, raw.encode("utf-8", "surrogatepass"))

    def valid(self, target: Target) -> dict[str, Any]:
        self.serial += 1
        return target.valid(self.serial)

    async def state(self) -> dict[str, Any]:
        """What a refused write could have changed: the owner, their post, every user and post."""
        headers = self.owner.headers
        owner = await self.client.get(f"{API}/users/{self.owner.id}", headers=headers)
        post = await self.client.get(f"{API}/posts/{self.post_id}")
        users = await self.client.get(f"{API}/users", params={"limit": 100})
        posts = await self.client.get(f"{API}/posts", params={"limit": 100})
        assert owner.status_code == post.status_code == users.status_code == posts.status_code == 200
        return {"owner": owner.json(), "post": post.json(), "users": users.json(), "posts": posts.json()}


@pytest.fixture
async def subject(client: httpx.AsyncClient, accounts: Accounts) -> Subject:
    owner = await accounts.create("Owner")
    response = await client.post(
        f"{API}/posts", json={"title": "Before", "tags": ["keep"]}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    return Subject(client, owner, response.json()["id"])


def assert_client_error(response: httpx.Response) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    return assert_problem(response, response.status_code)


def assert_errors_at(response: httpx.Response, field: str) -> None:
    """Every error of a 422 is about `field` of the body (a union adds its branch to the loc)."""
    locs = [error["loc"] for error in response.json()["errors"]]
    assert locs, response.text
    assert all(loc[:2] == ["body", field] for loc in locs), locs


async def assert_refused_and_unchanged(
    subject: Subject, before: dict[str, Any], response: httpx.Response, *statuses: int
) -> None:
    assert_problem(response, *statuses)
    assert await subject.state() == before, "a refused request changed something"


async def assert_still_serving(subject: Subject, target: Target) -> None:
    """The process survived: the same route takes a valid request right after."""
    response = await subject.send_json(target, subject.valid(target))
    assert response.status_code == SUCCESS[target.method], response.text


# --- text the databases cannot store ------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS, ids=target_ids)
async def test_a_nul_byte_in_text_is_422(subject: Subject, target: Target) -> None:
    before = await subject.state()
    payload = {**subject.valid(target), target.text_field: "a\u0000b"}
    response = await subject.send_json(target, payload)
    await assert_refused_and_unchanged(subject, before, response, 422)
    assert_errors_at(response, target.text_field)


@pytest.mark.parametrize("surrogates", ["\\ud800", "\\udfff", "a\\udc00b", "\\udc00\\ud800"])
@pytest.mark.parametrize("target", TARGETS, ids=target_ids)
async def test_a_lone_surrogate_in_text_is_422(subject: Subject, target: Target, surrogates: str) -> None:
    before = await subject.state()
    response = await subject.send_with(target, target.text_field, f'"{surrogates}"')
    await assert_refused_and_unchanged(subject, before, response, 422)
    assert_errors_at(response, target.text_field)


@pytest.mark.parametrize("target", TARGETS, ids=target_ids)
async def test_a_body_that_is_not_utf8_is_a_client_error(subject: Subject, target: Target) -> None:
    before = await subject.state()
    payload = {**subject.valid(target), target.text_field: "@PLACEHOLDER@"}
    raw = json.dumps(payload).encode().replace(b"@PLACEHOLDER@", b"\xff\xfe")
    response = await subject.send(target, raw)
    await assert_refused_and_unchanged(subject, before, response, 400, 422)
    await assert_still_serving(subject, target)


# --- JSON that is not the body -------------------------------------------------------------------


MALFORMED = {
    "unclosed-object": b"{bad",
    "unclosed-array": b"[",
    "empty": b"",
    "null": b"null",
    "string": b'"a string"',
    "array": b"[]",
    "number": b"42",
    "trailing-garbage": b'{"title": "t"} x',
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("target", TARGETS, ids=target_ids)
async def test_malformed_json_is_422_with_a_problem_body(
    subject: Subject, target: Target, raw: bytes
) -> None:
    before = await subject.state()
    response = await subject.send(target, raw)
    await assert_refused_and_unchanged(subject, before, response, 422)
    assert response.json()["errors"], "a 422 names what is wrong"


@pytest.mark.parametrize("depth", [100, 10_000])
@pytest.mark.parametrize("kind", ["arrays", "objects"])
@pytest.mark.parametrize("target", TARGETS, ids=target_ids)
async def test_deeply_nested_json_is_a_client_error_and_the_server_carries_on(
    subject: Subject, settings: Settings, target: Target, kind: str, depth: int
) -> None:
    value = "[" * depth + "]" * depth if kind == "arrays" else '{"a":' * depth + "1" + "}" * depth
    before = await subject.state()
    response = await subject.send_with(target, target.text_field, value)
    assert response.request.headers["content-length"] == str(len(response.request.content))
    assert len(response.request.content) < settings.max_body_bytes
    await assert_refused_and_unchanged(subject, before, response, 422)
    await assert_still_serving(subject, target)


@pytest.mark.parametrize("kind", ["arrays", "objects"])
async def test_json_nested_100000_deep_is_a_422_problem_at_the_default_body_limit(
    settings: Settings, database: Database, kind: str
) -> None:
    app = create_app(
        settings.model_copy(update={"max_body_bytes": Settings.model_fields["max_body_bytes"].default}),
        database,
    )
    depth = 100_000
    value = "[" * depth + "]" * depth if kind == "arrays" else '{"a":' * depth + "1" + "}" * depth
    body = f'{{"name": {value}, "email": "nia@example.com", "password": "{PASSWORD}"}}'.encode()
    assert len(body) < app.state.settings.max_body_bytes
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post(
                f"{API}/users", content=body, headers={"Content-Type": "application/json"}
            )
            users = await client.get(f"{API}/users")
    problem = assert_problem(response, 422)
    assert problem["errors"] == [
        {"loc": ["body"], "msg": "JSON decode error: the body is nested too deeply", "type": "json_invalid"}
    ]
    assert users.json()["items"] == []


@pytest.mark.parametrize("target", TARGETS, ids=target_ids)
async def test_an_overlong_string_under_the_body_limit_is_422(
    subject: Subject, settings: Settings, target: Target
) -> None:
    before = await subject.state()
    payload = {**subject.valid(target), target.text_field: "x" * 10_000}
    assert len(json.dumps(payload)) < settings.max_body_bytes
    response = await subject.send_json(target, payload)
    await assert_refused_and_unchanged(subject, before, response, 422)
    assert_errors_at(response, target.text_field)


HUGE_NUMBERS = {"1e400": "1e400", "-1e400": "-1e400", "10**400": str(10**400), "-10**400": str(-(10**400))}


@pytest.mark.parametrize("number", HUGE_NUMBERS.values(), ids=HUGE_NUMBERS.keys())
@pytest.mark.parametrize("target", TARGETS, ids=target_ids)
async def test_a_huge_json_number_for_a_text_field_is_422(
    subject: Subject, target: Target, number: str
) -> None:
    before = await subject.state()
    response = await subject.send_with(target, target.text_field, number)
    await assert_refused_and_unchanged(subject, before, response, 422)


@pytest.mark.parametrize("number", HUGE_NUMBERS.values(), ids=HUGE_NUMBERS.keys())
async def test_a_huge_json_number_for_is_admin_is_422(subject: Subject, number: str) -> None:
    target = TARGETS[3]  # update-user
    before = await subject.state()
    response = await subject.client.patch(
        subject.url(target),
        content=f'{{"is_admin": {number}}}'.encode(),
        headers=subject.headers(target),
    )
    await assert_refused_and_unchanged(subject, before, response, 422)
    assert before["owner"]["is_admin"] is False


async def test_an_integer_too_long_to_parse_is_a_client_error(subject: Subject) -> None:
    target = TARGETS[0]  # create-post
    before = await subject.state()
    response = await subject.send_with(target, "title", "9" * 5_000)
    await assert_refused_and_unchanged(subject, before, response, 422)
    assert response.json()["errors"] == [
        {"loc": ["body"], "msg": "JSON decode error: a number has too many digits", "type": "json_invalid"}
    ]
    await assert_still_serving(subject, target)


@pytest.mark.parametrize("target", TARGETS, ids=target_ids)
async def test_a_422_lists_at_most_100_errors_and_counts_the_rest(subject: Subject, target: Target) -> None:
    before = await subject.state()
    payload = {**subject.valid(target), **{f"unknown{number}": 0 for number in range(1_000)}}
    response = await subject.send_json(target, payload)
    await assert_refused_and_unchanged(subject, before, response, 422)
    problem = response.json()
    assert len(problem["errors"]) == 100
    assert problem["errors_omitted"] == 900
    assert problem["errors"][0] == {
        "loc": ["body", "unknown0"],
        "msg": "Extra inputs are not permitted",
        "type": "extra_forbidden",
    }


async def test_a_422_with_few_errors_lists_them_all_and_omits_no_count(subject: Subject) -> None:
    response = await subject.send_json(TARGETS[0], {"title": "", "body": 1, "tags": "x"})
    problem = assert_problem(response, 422)
    assert len(problem["errors"]) == 3
    assert "errors_omitted" not in problem


WRONG_TAGS = {
    "a-string": "python",
    "numbers": [1, 2],
    "an-object": {"python": True},
    "nested-lists": [["python"]],
    "null-item": [None],
    "ten-thousand-items": ["a"] * 10_000,
}


@pytest.mark.parametrize("tags", WRONG_TAGS.values(), ids=WRONG_TAGS.keys())
@pytest.mark.parametrize("target", POST_TARGETS, ids=target_ids)
async def test_tags_of_the_wrong_shape_are_422(subject: Subject, target: Target, tags: Any) -> None:
    before = await subject.state()
    response = await subject.send_json(target, {**subject.valid(target), "tags": tags})
    await assert_refused_and_unchanged(subject, before, response, 422)


@pytest.mark.parametrize("target", POST_TARGETS, ids=target_ids)
async def test_ten_thousand_distinct_tags_are_refused(
    subject: Subject, settings: Settings, target: Target
) -> None:
    before = await subject.state()
    payload = {**subject.valid(target), "tags": [f"tag-{n}" for n in range(10_000)]}
    response = await subject.send_json(target, payload)
    expected = 413 if len(json.dumps(payload)) > settings.max_body_bytes else 422
    await assert_refused_and_unchanged(subject, before, response, expected)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
@pytest.mark.parametrize("target", TARGETS, ids=target_ids)
async def test_a_json_body_sent_as_another_content_type_is_a_client_error(
    subject: Subject, target: Target, content_type: str | None
) -> None:
    before = await subject.state()
    raw = json.dumps(subject.valid(target)).encode()
    response = await subject.send(target, raw, content_type=content_type)
    if content_type is None:
        # No Content-Type at all: FastAPI reads JSON (strict_content_type off) or refuses.
        assert response.status_code in (SUCCESS[target.method], 415, 422), response.text
        return
    assert_client_error(response)
    assert await subject.state() == before


# --- ids and query parameters out of range -------------------------------------------------------

HOSTILE_IDS = [str(2**31), str(2**63), str(10**30), "-1", "0", "1e3", "0x10", " 1", "1.5", "null"]
ID_ROUTES = [
    ("GET", f"{API}/posts/{{id}}"),
    ("PATCH", f"{API}/posts/{{id}}"),
    ("DELETE", f"{API}/posts/{{id}}"),
    ("GET", f"{API}/users/{{id}}"),
    ("PATCH", f"{API}/users/{{id}}"),
    ("DELETE", f"{API}/users/{{id}}"),
    ("GET", f"{API}/users/{{id}}/posts"),
]


@pytest.mark.parametrize(("method", "path"), ID_ROUTES, ids=[f"{m} {p}" for m, p in ID_ROUTES])
async def test_an_id_out_of_range_or_not_an_integer_is_404_or_422(
    client: httpx.AsyncClient, accounts: Accounts, method: str, path: str
) -> None:
    # Ids that parse leniently (" 1") must not reach a real row: take id 1 if it is free, then free it.
    placeholder = await accounts.create("Placeholder")
    admin = await accounts.create("Admin", admin=True)
    gone = await client.delete(f"{API}/users/{placeholder.id}", headers=admin.headers)
    assert gone.status_code == 204
    assert (await client.get(f"{API}/users/1")).status_code == 404
    assert (await client.get(f"{API}/posts/1")).status_code == 404
    body = {"title": "x"} if "posts" in path else {"name": "x"}

    wrong: dict[str, Any] = {}
    for hostile_id in HOSTILE_IDS:
        url = path.replace("{id}", hostile_id.replace(" ", "%20"))
        options: dict[str, Any] = {"json": body} if method == "PATCH" else {}
        response = await client.request(method, url, headers=admin.headers, **options)
        if response.status_code not in (404, 422) or response.headers["content-type"] != PROBLEM:
            wrong[hostile_id] = (response.status_code, response.text)
    assert wrong == {}
    me = await client.get(f"{API}/users/me", headers=admin.headers)
    assert me.status_code == 200
    assert me.json()["name"] == "Admin"


QUERY_CASES = [
    (f"{API}/posts", {"limit": str(10**30)}),
    (f"{API}/posts", {"limit": "1.5"}),
    (f"{API}/posts", {"limit": "-1"}),
    (f"{API}/posts", {"limit": "0"}),
    (f"{API}/posts", {"limit": "101"}),
    (f"{API}/posts", {"author_id": str(10**30)}),
    (f"{API}/posts", {"author_id": str(2**31)}),
    (f"{API}/posts", {"author_id": "-5"}),
    (f"{API}/posts", {"author_id": "0"}),
    (f"{API}/posts", {"cursor": "A" * 10_000}),
    (f"{API}/posts", {"tag": "x" * 10_000}),
    (f"{API}/posts", {"q": "x" * 10_000}),
    (f"{API}/users", {"limit": str(10**30)}),
    (f"{API}/users", {"cursor": "A" * 10_000}),
    (f"{API}/users", {"q": "x" * 10_000}),
    (f"{API}/tags", {"limit": "1.5"}),
    (f"{API}/tags", {"cursor": "A" * 10_000}),
    (f"{API}/users/{{user_id}}/posts", {"limit": str(10**30)}),
    (f"{API}/users/{{user_id}}/posts", {"cursor": "A" * 10_000}),
]


@pytest.mark.parametrize(
    ("path", "params"),
    QUERY_CASES,
    ids=[
        f"{path.rsplit('/', 1)[-1]}-{key}={value[:12]}"
        for path, params in QUERY_CASES
        for key, value in params.items()
    ],
)
async def test_a_query_parameter_out_of_range_is_422(
    subject: Subject, path: str, params: dict[str, str]
) -> None:
    response = await subject.client.get(path.format(user_id=subject.owner.id), params=params)
    problem = assert_problem(response, 422)
    assert response.text.count("A" * 100) == 0, "the submitted value is echoed"
    assert problem.get("errors") or problem["detail"]


@pytest.mark.parametrize("path", [f"{API}/posts", f"{API}/users"])
async def test_a_nul_byte_in_a_search_filter_is_422_on_every_backend(subject: Subject, path: str) -> None:
    # PostgreSQL cannot take NUL in text; the filter is checked like stored text, on every backend.
    response = await subject.client.get(path, params={"q": "a\u0000b"})
    problem = assert_problem(response, 422)
    assert [error["loc"][:2] for error in problem["errors"]] == [["query", "q"]]


@pytest.mark.parametrize("raw", ["%FF", "%ED%A0%80", "%C0%80", "a%FE%FFb"])
@pytest.mark.parametrize("path", [f"{API}/posts", f"{API}/users"])
async def test_undecodable_bytes_in_a_search_filter_are_never_a_server_error(
    subject: Subject, path: str, raw: str
) -> None:
    response = await subject.client.get(f"{path}?q={raw}")
    assert response.request.url.query == f"q={raw}".encode()
    if response.status_code == 200:
        assert response.json()["items"] == []
    else:
        assert_problem(response, 422)


LOGIN_FORMS = {
    "nul-in-username": b"username=a%00b%40example.com&password=whatever-password",
    "nul-in-password": b"username=user1%40example.com&password=a%00b",
    "undecodable-username": b"username=%FF%FE%40example.com&password=whatever-password",
    "surrogate-in-username": b"username=%ED%A0%80%40example.com&password=whatever-password",
    "overlong-username": b"username=" + b"x" * 10_000 + b"&password=whatever-password",
}


@pytest.mark.parametrize("form", LOGIN_FORMS.values(), ids=LOGIN_FORMS.keys())
async def test_a_hostile_login_form_is_refused_as_a_client_error(subject: Subject, form: bytes) -> None:
    response = await subject.client.post(
        f"{API}/auth/token", content=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_problem(response, 401, 422)
    if response.status_code == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    # The owner can still log in: nothing above locked or broke the route.
    token = await subject.client.post(
        f"{API}/auth/token", data={"username": subject.owner.email, "password": PASSWORD}
    )
    assert token.status_code == 200, token.text


# --- submitted values are never echoed, nor logged ----------------------------------------------


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """Every logger at DEBUG, enabled and propagating to the capture."""
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            caplog.set_level(logging.DEBUG, logger=name)
            monkeypatch.setattr(logger, "disabled", False)
            monkeypatch.setattr(logger, "propagate", True)
    return caplog


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    parts = [caplog.text]
    for record in caplog.records:
        parts += [record.getMessage(), repr(record.args), str(record.exc_info), str(record.__dict__)]
    return "\n".join(parts)


SECRET_BODIES: dict[str, tuple[str, str, bytes]] = {
    "sign-up-without-email": ("POST", "users", json.dumps({"name": "N", "password": SECRET}).encode()),
    "sign-up-name-too-long": (
        "POST",
        "users",
        json.dumps({"name": "n" * 1_000, "email": "s@example.com", "password": SECRET}).encode(),
    ),
    "sign-up-unknown-field": (
        "POST",
        "users",
        json.dumps({"name": "N", "email": "s@example.com", "password": SECRET, "role": "admin"}).encode(),
    ),
    "sign-up-secret-as-email": (
        "POST",
        "users",
        json.dumps({"name": "N", "email": SECRET, "password": SECRET}).encode(),
    ),
    "sign-up-secret-too-long": (
        "POST",
        "users",
        json.dumps({"name": "N", "email": "s@example.com", "password": SECRET * 10}).encode(),
    ),
    "sign-up-password-wrong-type": (
        "POST",
        "users",
        json.dumps({"name": "N", "email": "s@example.com", "password": [SECRET]}).encode(),
    ),
    "sign-up-broken-json": ("POST", "users", f'{{"name": "N", "password": "{SECRET}", '.encode()),
    "sign-up-nul-in-name": (
        "POST",
        "users",
        json.dumps({"name": "a\u0000b", "email": "s@example.com", "password": SECRET}).encode(),
    ),
    "change-user-unknown-field": ("PATCH", "me", json.dumps({"password": SECRET, "role": "admin"}).encode()),
    "change-user-null-name": ("PATCH", "me", json.dumps({"password": SECRET, "name": None}).encode()),
}


@pytest.mark.parametrize(("method", "where", "raw"), SECRET_BODIES.values(), ids=SECRET_BODIES.keys())
async def test_a_refused_body_never_echoes_nor_logs_the_password(
    subject: Subject, all_logs: pytest.LogCaptureFixture, method: str, where: str, raw: bytes
) -> None:
    before = await subject.state()
    url = f"{API}/users" if where == "users" else f"{API}/users/{subject.owner.id}"
    headers = {"Content-Type": "application/json", **(subject.owner.headers if where == "me" else {})}
    response = await subject.client.request(method, url, content=raw, headers=headers)

    await assert_refused_and_unchanged(subject, before, response, 422)
    assert SECRET not in response.text
    assert "Sup3r" not in response.text
    logs = logged_text(all_logs)
    assert "HTTP Request" in logs, "the capture sees the test's own requests (it is on)"
    assert SECRET not in logs
    assert "Sup3r" not in logs


async def test_a_login_form_refused_as_invalid_never_echoes_nor_logs_the_password(
    client: httpx.AsyncClient, all_logs: pytest.LogCaptureFixture
) -> None:
    response = await client.post(f"{API}/auth/token", data={"password": SECRET})
    assert_problem(response, 422)
    assert SECRET not in response.text
    failed = await client.post(f"{API}/auth/token", data={"username": "x@example.com", "password": SECRET})
    assert_problem(failed, 401)
    assert SECRET not in failed.text
    logs = logged_text(all_logs)
    assert "HTTP Request" in logs
    assert SECRET not in logs


# --- the body limit, at the ASGI level ------------------------------------------------------------


@dataclass
class AsgiCall:
    """The result of calling the app directly: what it sent, and how much it read."""

    status: int
    headers: dict[str, str]
    body: bytes
    receives: int
    bytes_read: int


def http_scope(method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
        "state": {},
    }


async def call_app(app: Any, scope: dict[str, Any], chunks: Callable[[int], bytes | None]) -> AsgiCall:
    """Run one request through the app; `chunks(n)` gives the n-th body chunk, None for the last."""
    receives = 0
    bytes_read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal receives, bytes_read
        receives += 1
        if receives > 100_000:  # bounded: an app that never stops reading fails, not hangs
            raise AssertionError("the app kept reading the body")
        chunk = chunks(receives)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        bytes_read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    run: Callable[..., Awaitable[None]] = app
    await run(scope, receive, send)
    (start,) = [message for message in sent if message["type"] == "http.response.start"]
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return AsgiCall(start["status"], headers, body, receives, bytes_read)


def assert_413(call: AsgiCall, limit: int) -> None:
    assert call.status == 413, call.body
    assert call.headers["content-type"] == PROBLEM
    problem = json.loads(call.body)
    assert problem["status"] == 413
    assert str(limit) in problem["detail"]


@pytest.mark.parametrize("declared", [64 * 1024 + 1, 100 * 1024 * 1024, 10**9, 10**30])
async def test_a_declared_length_over_the_limit_is_413_before_any_of_the_body_is_read(
    app_and_client: tuple[Any, httpx.AsyncClient], accounts: Accounts, settings: Settings, declared: int
) -> None:
    app, client = app_and_client
    assert declared > settings.max_body_bytes
    owner = await accounts.create()
    scope = http_scope(
        "POST",
        f"{API}/posts",
        {**owner.headers, "Content-Type": "application/json", "Content-Length": str(declared)},
    )
    call = await call_app(app, scope, lambda n: b'{"title": "few bytes"}' if n == 1 else None)

    assert_413(call, settings.max_body_bytes)
    assert call.receives == 0, "the app read a body it had already refused"
    posts = await client.get(f"{API}/posts")
    assert posts.json()["items"] == []


@pytest.mark.parametrize("chunk_size", [1, 1000, 4096, 64 * 1024 + 7])
async def test_a_streamed_body_over_the_limit_is_413_and_read_no_further_than_the_limit(
    app_and_client: tuple[Any, httpx.AsyncClient], accounts: Accounts, settings: Settings, chunk_size: int
) -> None:
    app, client = app_and_client
    limit = settings.max_body_bytes
    owner = await accounts.create()
    scope = http_scope("POST", f"{API}/posts", {**owner.headers, "Content-Type": "application/json"})
    opening = b'{"title": "streamed", "body": "'
    total = limit * 4  # what the client would send; the app must stop long before

    if chunk_size == 1:
        total = limit + 1_000  # one byte per receive: keep within call_app's bound on receives

    def chunks(n: int) -> bytes | None:
        start, end = (n - 1) * chunk_size, min(n * chunk_size, total)
        if start >= total:
            return None
        head = opening[start:end]
        return head + b"x" * (end - start - len(head))

    call = await call_app(app, scope, chunks)

    assert_413(call, limit)
    assert limit < call.bytes_read <= limit + chunk_size, call.bytes_read
    posts = await client.get(f"{API}/posts")
    assert posts.json()["items"] == []


async def test_a_streamed_body_at_the_limit_is_read_whole_and_served(
    app_and_client: tuple[Any, httpx.AsyncClient], accounts: Accounts, settings: Settings
) -> None:
    """The control for the test above: the counting receive does deliver a body the app accepts."""
    app, _ = app_and_client
    owner = await accounts.create()
    raw = json.dumps({"title": "streamed"}).encode()
    raw += b" " * (settings.max_body_bytes - len(raw))
    pieces = [raw[start : start + 1000] for start in range(0, len(raw), 1000)]
    scope = http_scope("POST", f"{API}/posts", {**owner.headers, "Content-Type": "application/json"})

    call = await call_app(app, scope, lambda n: pieces[n - 1] if n <= len(pieces) else None)

    assert call.status == 201, call.body
    assert call.bytes_read == settings.max_body_bytes
    assert json.loads(call.body)["title"] == "streamed"
