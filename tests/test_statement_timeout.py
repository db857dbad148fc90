"""A statement past STATEMENT_TIMEOUT_MS is cut off by the database: a 503 of its own type.

Issue 16: "No `statement_timeout` is set, so a scan runs on after its client has gone."
PostgreSQL has `statement_timeout`, MariaDB `max_statement_time` (SELECTs only), SQLite a
progress handler that interrupts the statement; each is set once per connection.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from conftest import assert_problem
from fastapi import FastAPI, Request
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from blogapi.config import Settings
from blogapi.db import create_engine, get_database
from blogapi.errors import ProblemType, is_statement_timeout
from blogapi.main import create_app

LIMIT_MS = 200
COUNT_TO = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ROWS) SELECT count(*) FROM c"
)


def slow_statement(backend: str, seconds: float) -> str:
    """A read that runs about `seconds`, or (SQLite) long enough: counting in a recursive CTE."""
    if backend == "postgresql":
        return f"SELECT pg_sleep({seconds})"
    if backend == "mariadb":
        return f"SELECT SLEEP({seconds})"
    rows = int(seconds * 10_000_000)
    return COUNT_TO.replace("ROWS", str(rows))


async def still_running(engine: AsyncEngine, backend: str, statement: str) -> int:
    """How many sessions other than this one are running `statement`."""
    async with engine.connect() as connection:
        if backend == "postgresql":
            query = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE state = 'active' AND query = :statement AND pid <> pg_backend_pid()"
            )
        else:
            query = (
                "SELECT count(*) FROM information_schema.PROCESSLIST"
                " WHERE INFO = :statement AND ID <> CONNECTION_ID()"
            )
        count: int = await connection.scalar(text(query), {"statement": statement})
        return count


@pytest.fixture
async def limited_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings.model_copy(update={"statement_timeout_ms": LIMIT_MS}))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client


async def test_a_read_past_the_time_limit_is_a_503_of_its_own_type_not_retried_and_not_left_running(
    limited_app: tuple[FastAPI, httpx.AsyncClient],
    settings: Settings,
    backend: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, client = limited_app
    statement = slow_statement(backend, 10)
    attempts = 0

    @app.get("/slow")
    async def slow(request: Request) -> None:
        nonlocal attempts
        attempts += 1
        async with get_database(request).read_engine.connect() as connection:
            await connection.execute(text(statement))

    with caplog.at_level(logging.WARNING, logger="blogapi.errors"):
        response = await client.get("/slow")
    problem = assert_problem(response, 503)
    assert problem["type"] == ProblemType.STATEMENT_TIMEOUT
    assert response.headers["Retry-After"] == "1"
    assert attempts == 1, "a statement timeout must not be retried"
    assert "statement timeout on GET /slow" in caplog.text
    if backend == "sqlite":  # the interrupted connection is back in the pool, and works
        async with app.state.database.read_engine.connect() as connection:
            assert await connection.scalar(text("SELECT 1")) == 1
    else:
        unlimited = create_engine(settings, pooled=False)
        try:
            assert await still_running(unlimited, backend, statement) == 0
        finally:
            await unlimited.dispose()


async def test_the_apps_connections_limit_statements_but_migrations_and_a_zero_setting_do_not(
    settings: Settings, backend: str
) -> None:
    statement = text(slow_statement(backend, 0.5))
    limited = settings.model_copy(update={"statement_timeout_ms": 100})
    engines = {
        "app": create_engine(limited),
        "migrations": create_engine(limited, pooled=False),
        "no limit": create_engine(settings.model_copy(update={"statement_timeout_ms": 0})),
    }
    try:
        async with engines["app"].connect() as connection:
            with pytest.raises(DBAPIError) as cut_off:
                await connection.execute(statement)
        assert is_statement_timeout(cut_off.value), cut_off.value
        for name in ("migrations", "no limit"):
            async with engines[name].connect() as connection:
                assert len((await connection.execute(statement)).all()) == 1, name
    finally:
        for engine in engines.values():
            await engine.dispose()
