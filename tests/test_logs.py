"""Issue 13, logs: one structured stream, request ids, an access line per request, no secrets.

In-process tests read the standard library's records (caplog); the stream's own rendering
is tested on a StringIO (`stream` fixture); the marker-password test runs `blogapi serve`
with LOG_FORMAT=json and reads every line it wrote.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from conftest import PASSWORD, TEST_SECRET, Accounts, assert_problem, serving, upgrade
from fastapi import Request
from sqlalchemy import make_url, text

from blogapi import logs
from blogapi.config import Settings
from blogapi.db import get_database
from blogapi.main import create_app

# The serve() helper of the fault tests (a directory of their own, not a package).
sys.path.insert(0, str(Path(__file__).parent / "faults"))
from fault_support import free_port, serve, server_env

ACCESS = "blogapi.access"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = []
    for record in caplog.records:
        if record.name == ACCESS:
            assert isinstance(record.msg, dict), record.msg
            lines.append(record.msg)
    return lines


# --- request ids --------------------------------------------------------------------------------


async def test_a_well_formed_request_id_is_echoed_and_quoted_in_problem_details(
    client: httpx.AsyncClient,
) -> None:
    request_id = "Req-2026.12_01-abc"
    response = await client.get("/api/v1/posts/999999", headers={"X-Request-ID": request_id})
    problem = assert_problem(response, 404)
    assert response.headers["x-request-id"] == request_id
    assert problem["request_id"] == request_id


@pytest.mark.parametrize(
    "sent",
    ["", "a" * 65, "has space", 'quote"d', "semi;colon", "caf\u00e9", "line\\nbreak", "a/b"],
)
async def test_a_malformed_request_id_is_replaced_by_a_new_one(client: httpx.AsyncClient, sent: str) -> None:
    response = await client.get("/api/v1/nothing-here", headers=[(b"X-Request-ID", sent.encode())])
    given = response.headers["x-request-id"]
    assert given != sent
    assert logs.REQUEST_ID_PATTERN.fullmatch(given)
    assert response.json()["request_id"] == given


async def test_each_request_without_an_id_gets_its_own(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/health/live")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.backends("sqlite")
async def test_a_500_carries_its_request_id_in_the_header_the_body_and_the_error_line(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    async with serving(app, raise_app_exceptions=False) as client:
        with caplog.at_level(logging.INFO):
            response = await client.get("/boom", headers={"X-Request-ID": "the-500"})
    problem = assert_problem(response, 500)
    assert response.headers["x-request-id"] == "the-500"
    assert problem["request_id"] == "the-500"
    [error] = [record for record in caplog.records if record.name == "blogapi.errors"]
    assert logs.current_request_id() is None  # reset once the request is over
    assert "unhandled error on GET /boom" in error.getMessage()
    [line] = access_lines(caplog)
    assert line["status"] == 500
    assert line["route"] == "/boom"


async def test_a_database_error_is_logged_with_the_databases_message_and_the_request_id(
    settings: Settings, backend: str, stream: io.StringIO
) -> None:
    """A 503 names what the database said, on the line that carries the request's id."""
    settings = settings.model_copy(update={"statement_timeout_ms": 100, "log_format": "json"})
    logs.configure_logging(settings, stream=stream)
    app = create_app(settings)
    slow = {
        "postgresql": "SELECT pg_sleep(5)",
        "mariadb": "SELECT SLEEP(5)",
        "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000)"
        " SELECT count(*) FROM c",
    }[backend]
    said = {
        "postgresql": "canceling statement due to statement timeout",
        "mariadb": "max_statement_time exceeded",
        "sqlite": "interrupted",
    }[backend]

    @app.get("/slow")
    async def slow_read(request: Request) -> None:
        async with get_database(request).read_engine.connect() as connection:
            await connection.execute(text(slow))

    async with serving(app, raise_app_exceptions=False) as client:
        response = await client.get("/slow", headers={"X-Request-ID": "slow-read-1"})
    assert_problem(response, 503)
    rendered = [json.loads(line) for line in stream.getvalue().splitlines()]
    [error] = [line for line in rendered if line.get("logger") == "blogapi.errors"]
    assert error["request_id"] == "slow-read-1"
    assert said in error["event"]
    [access] = [line for line in rendered if line.get("logger") == ACCESS]
    assert access["request_id"] == "slow-read-1"
    assert access["cause"] == "statement_timeout"


# --- the access line ----------------------------------------------------------------------------


async def test_the_access_line_has_method_route_template_status_duration_bytes_client_and_user(
    client: httpx.AsyncClient, accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    ann = await accounts.create("Ann")
    created = await client.post(
        "/api/v1/posts", json={"title": "Hello", "body": "World", "tags": []}, headers=ann.headers
    )
    post_id = created.json()["id"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=ACCESS):
        read = await client.get(f"/api/v1/posts/{post_id}", headers=ann.headers)
        anonymous = await client.get(f"/api/v1/posts/{post_id}")
    assert read.status_code == anonymous.status_code == 200
    mine, theirs = access_lines(caplog)
    assert mine["method"] == "GET"
    assert mine["route"] == "/api/v1/posts/{post_id}"
    assert mine["status"] == 200
    assert mine["bytes"] == len(read.content)
    assert mine["duration_ms"] >= 0
    assert mine["client"] == "127.0.0.1"
    assert mine["user_id"] == ann.id
    assert "user_id" not in theirs


async def test_a_head_request_is_logged_as_head_with_its_route(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS):
        response = await client.head("/api/v1/posts")
    assert response.status_code == 200
    [line] = access_lines(caplog)
    assert (line["method"], line["route"], line["bytes"]) == ("HEAD", "/api/v1/posts", 0)


async def test_a_path_no_route_matches_is_logged_as_unmatched_not_as_the_clients_path(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS):
        await client.get("/api/v1/secret-looking-path-9f8e7d")
    [line] = access_lines(caplog)
    assert line["route"] == "unmatched"
    assert "9f8e7d" not in str(line)


async def test_the_access_line_takes_the_client_address_uvicorn_resolved(
    settings: Settings, database: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The address after trusted proxies: the scope's client, which uvicorn's proxy
    middleware rewrites (as the login throttle counts it)."""
    app = create_app(settings, database)
    async with serving(app, client=("203.0.113.7", 4444)) as client:
        with caplog.at_level(logging.INFO, logger=ACCESS):
            await client.get("/health/live")
    [line] = access_lines(caplog)
    assert line["client"] == "203.0.113.7"


async def test_no_access_line_below_info(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        await client.get("/health/live")
    assert access_lines(caplog) == []


# --- the stream ---------------------------------------------------------------------------------


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Where configure_logging writes; the process's logging is restored afterwards."""
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    names = ("uvicorn", "uvicorn.error", "uvicorn.asgi", "uvicorn.access", *logs.QUIET_LIBRARIES)
    saved = {name: _logger_state(logging.getLogger(name)) for name in names}
    saved_stream = logs._stream
    output = io.StringIO()
    yield output
    root.handlers[:] = saved_root[0]
    root.setLevel(saved_root[1])
    for name, (handlers, propagate, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.setLevel(level)
    logs._stream = saved_stream
    structlog.reset_defaults()


def _logger_state(logger: logging.Logger) -> tuple[list[logging.Handler], bool, int]:
    return list(logger.handlers), logger.propagate, logger.level


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": "sqlite+aiosqlite:///:memory:",
        "secret_key": TEST_SECRET,
        "environment": "test",
    }
    return Settings(_env_file=None, **(values | overrides))


def test_every_library_logs_through_one_json_stream(stream: io.StringIO) -> None:
    logs.configure_logging(_settings(log_format="json"), stream=stream)
    logging.getLogger("uvicorn.error").info("Started server process [1]")
    logging.getLogger("alembic.runtime.migration").warning("a migration warning")
    logging.getLogger("sqlalchemy.pool").warning("a pool warning")
    logging.getLogger("blogapi.errors").error("database unavailable on GET /x: %s", "OperationalError: gone")
    structlog.get_logger("blogapi.anything").info("structured", answer=42)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("uvicorn.error", "info"),
        ("alembic.runtime.migration", "warning"),
        ("sqlalchemy.pool", "warning"),
        ("blogapi.errors", "error"),
        ("blogapi.anything", "info"),
    ]
    assert lines[3]["event"] == "database unavailable on GET /x: OperationalError: gone"
    assert lines[4]["answer"] == 42
    assert all(line["timestamp"].endswith("Z") for line in lines)


def test_the_default_format_is_readable_key_value_lines_in_development(stream: io.StringIO) -> None:
    logs.configure_logging(_settings(environment="development"), stream=stream)
    structlog.get_logger("blogapi.x").info("request", method="GET", status=200)
    [line] = stream.getvalue().splitlines()
    assert "request" in line
    assert "method=GET" in line
    assert "status=200" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_production_logs_json_unless_told_otherwise() -> None:
    production = {"environment": "production", "secret_key": "k" * 48}
    assert _settings(**production).logs_as_json
    assert not _settings(**production, log_format="TEXT").logs_as_json
    assert not _settings().logs_as_json
    assert _settings(log_format="json").logs_as_json


def test_log_level_sets_the_level_and_the_libraries_stay_at_warning(stream: io.StringIO) -> None:
    logs.configure_logging(_settings(log_format="json", log_level="debug"), stream=stream)
    logging.getLogger("blogapi.x").debug("ours at debug")
    logging.getLogger("uvicorn.error").debug("uvicorn at debug")
    # At INFO SQLAlchemy logs each statement with its parameters.
    logging.getLogger("sqlalchemy.engine.Engine").info("[generated] ('hash-of-a-password',)")
    logging.getLogger("aiosqlite").debug("executing ... ('hash-of-a-password',)")
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["ours at debug", "uvicorn at debug"]


def test_log_level_warning_silences_info(stream: io.StringIO) -> None:
    logs.configure_logging(_settings(log_level="WARNING"), stream=stream)
    logging.getLogger("uvicorn.error").info("Started server process [1]")
    logs.FastLogger(ACCESS).info("request", status=200)
    assert stream.getvalue() == ""


def test_uvicorns_access_log_is_replaced(stream: io.StringIO) -> None:
    logging.getLogger("uvicorn.access").addHandler(logging.StreamHandler(sys.stderr))
    logs.configure_logging(_settings(), stream=stream)
    # uvicorn writes access lines only when this logger has a handler somewhere.
    assert not logging.getLogger("uvicorn.access").hasHandlers()


def test_the_access_line_goes_to_the_stream_with_its_request_id(stream: io.StringIO) -> None:
    logs.configure_logging(_settings(log_format="json"), stream=stream)
    token = logs.request_id_var.set("abc.123")
    try:
        logs.FastLogger(ACCESS).info("request", method="GET", route="/x", status=200)
    finally:
        logs.request_id_var.reset(token)
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line == {
        "method": "GET",
        "route": "/x",
        "status": 200,
        "event": "request",
        "level": "info",
        "logger": ACCESS,
        "request_id": "abc.123",
        "timestamp": line["timestamp"],
    }


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_secrets_are_masked_in_any_line_whoever_logs_it(stream: io.StringIO, log_format: str) -> None:
    database_password = "db-pass-never-logged"
    settings = _settings(
        log_format=log_format,
        database_url=f"postgresql+asyncpg://blogapi:{database_password}@db.example/blogapi",
        metrics_token="metrics-token-never-logged",
    )
    logs.configure_logging(settings, stream=stream)
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLW5ldmVyLWxvZ2dlZA"
    logger = logging.getLogger("somewhere")
    logger.warning("key %s and token %s", TEST_SECRET, settings.metrics_token.get_secret_value())  # type: ignore[union-attr]
    logger.warning("connecting to %s", make_url(settings.database_url).render_as_string(hide_password=False))
    logger.warning("other url mysql://u:other-pass-never-logged@h/db")
    logger.warning("headers: Authorization: Bearer opaque-token-never-logged")
    logger.warning("a jwt %s", jwt)
    structlog.get_logger("blogapi.x").warning("structured", key=TEST_SECRET)
    output = stream.getvalue()
    for secret in (
        TEST_SECRET,
        "metrics-token-never-logged",
        database_password,
        "other-pass-never-logged",
        "opaque-token-never-logged",
        jwt,
        "c2lnbmF0dXJl",
    ):
        assert secret not in output
    assert output.count(logs.MASK) >= 7


def test_a_traceback_in_the_text_format_shows_no_local_variables(stream: io.StringIO) -> None:
    logs.configure_logging(_settings(log_format="text"), stream=stream)

    def fail(password: str) -> None:
        raise ValueError("failed")

    local = "-".join(("local", "password", "never", "logged"))  # not in the source a traceback quotes
    try:
        fail(local)
    except ValueError:
        logging.getLogger("blogapi.errors").exception("unhandled")
    output = stream.getvalue()
    assert "Traceback" in output
    assert "ValueError: failed" in output
    assert local not in output


# --- never logged: a marker password through a real server --------------------------------------

MARKER = "Marker-Pa55word-7c1e"


@pytest.mark.backends("sqlite")
async def test_a_marker_password_appears_in_no_line_of_the_servers_log(
    scratch_database_url: str, tmp_path: Path
) -> None:
    """Sign-up, login (a wrong one and a right one) and password change, with `blogapi serve`
    at LOG_FORMAT=json and LOG_LEVEL=DEBUG: every line it wrote is JSON, the access lines
    are blogapi's (with request ids), and neither the marker, nor a token, nor the key
    appears anywhere."""
    await asyncio.to_thread(upgrade, scratch_database_url)
    port = free_port()
    env = server_env(scratch_database_url, log_format="json", log_level="DEBUG", metrics_token="m" * 20)
    argv = [str(Path(sys.executable).parent / "blogapi"), "serve", "--port", str(port)]
    async with (
        serve(argv, env, tmp_path, port) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as client,
    ):
        email = "marker@example.com"
        signed_up = await client.post(
            "/api/v1/users", json={"name": "Marker", "email": email, "password": MARKER}
        )
        assert signed_up.status_code == 201, signed_up.text
        wrong = await client.post("/api/v1/auth/token", data={"username": email, "password": MARKER + "x"})
        assert wrong.status_code == 401
        login = await client.post("/api/v1/auth/token", data={"username": email, "password": MARKER})
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        headers = {"Authorization": f"Bearer {token}", "X-Request-ID": "password-change"}
        changed = await client.patch(
            f"/api/v1/users/{signed_up.json()['id']}",
            json={"password": MARKER[::-1], "current_password": MARKER},
            headers=headers,
        )
        assert changed.status_code == 200, changed.text
        bad_body = await client.post("/api/v1/users", json={"email": email, "password": MARKER})
        assert bad_body.status_code == 422
    output = server.output()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert lines, output
    for secret in (MARKER, MARKER[::-1], token, TEST_SECRET, "m" * 20):
        assert secret not in output
    assert "authorization" not in output.lower()
    assert any(line["logger"] == "uvicorn.error" for line in lines)
    requests = [line for line in lines if line["logger"] == ACCESS]
    assert [(line["method"], line["route"], line["status"]) for line in requests][-5:] == [
        ("POST", "/api/v1/users", 201),
        ("POST", "/api/v1/auth/token", 401),
        ("POST", "/api/v1/auth/token", 200),
        ("PATCH", "/api/v1/users/{user_id}", 200),
        ("POST", "/api/v1/users", 422),
    ]
    assert requests[-2]["request_id"] == "password-change"
    assert requests[-2]["user_id"] == signed_up.json()["id"]
    assert all(logs.REQUEST_ID_PATTERN.fullmatch(line["request_id"]) for line in requests)
    # uvicorn's own access format ('127.0.0.1:5000 - "GET / HTTP/1.1" 200') never appears.
    assert "HTTP/1.1" not in output
    assert PASSWORD not in output
