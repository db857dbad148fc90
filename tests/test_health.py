"""Readiness tells the truth about the schema, and every 503 logs the database's reason."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from asgi_lifespan import LifespanManager
from conftest import TEST_SECRET, StatementCounter, assert_problem, upgrade
from fastapi import FastAPI, Request
from sqlalchemy import exc as sa_exc
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from blogapi import __version__
from blogapi.cli import alembic_config
from blogapi.config import Environment, Settings
from blogapi.db import Database, get_database
from blogapi.errors import database_cause
from blogapi.health import head_revision
from blogapi.main import create_app

READY = "/health/ready"
FIRST_REVISION = "c8f59356205a"
NEWER_REVISION = "ffffffffffff"  # not shipped: what a later release's migration would write
PASSWORD_IN_URL = "pw-never-logged"
PARAMETER = "parameter-never-logged"


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def _on(settings: Settings, database_url: str) -> FastAPI:
    return create_app(settings.model_copy(update={"database_url": database_url}))


# --- readiness ---------------------------------------------------------------------------------


async def test_readiness_is_503_on_a_database_without_schema_and_says_to_upgrade(
    settings: Settings, scratch_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="blogapi.health"):
        async with serving(_on(settings, scratch_database_url)) as client:
            response = await client.get(READY)
    problem = assert_problem(response, 503)
    assert problem["detail"] == "the database has no schema: run `blogapi db upgrade`"
    assert response.headers["retry-after"].isdigit()
    assert problem["detail"] in caplog.text


async def test_readiness_is_503_on_a_downgraded_schema_then_200_once_upgraded(
    settings: Settings, scratch_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.to_thread(upgrade, scratch_database_url)
    await asyncio.to_thread(command.downgrade, alembic_config(scratch_database_url), FIRST_REVISION)
    with caplog.at_level(logging.WARNING, logger="blogapi.health"):
        async with serving(_on(settings, scratch_database_url)) as client:
            behind = await client.get(READY)
            await asyncio.to_thread(upgrade, scratch_database_url)
            upgraded = await client.get(READY)
    problem = assert_problem(behind, 503)
    expected = f"the database schema is at {FIRST_REVISION}, expected head {head_revision()}"
    assert problem["detail"] == f"{expected}: run `blogapi db upgrade`"
    assert problem["detail"] in caplog.text
    assert upgraded.status_code == 200


async def test_readiness_on_a_schema_from_a_newer_release_does_not_say_to_upgrade(
    settings: Settings, scratch_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.to_thread(upgrade, scratch_database_url)
    engine = create_async_engine(scratch_database_url)
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE alembic_version SET version_num = :newer"), {"newer": NEWER_REVISION}
        )
    await engine.dispose()
    with caplog.at_level(logging.WARNING, logger="blogapi.health"):
        async with serving(_on(settings, scratch_database_url)) as client:
            response = await client.get(READY)
    problem = assert_problem(response, 503)
    assert problem["detail"] == (
        f"the database schema is at {NEWER_REVISION}, which this version of blogapi does not know"
        f" (expected head {head_revision()}): a newer release migrated it; run that release, or"
        f" downgrade the database to {head_revision()} with it"
    )
    assert "db upgrade" not in problem["detail"]
    assert problem["detail"] in caplog.text


def test_the_head_revision_is_the_newest_shipped_migration() -> None:
    assert head_revision() != FIRST_REVISION
    assert len(head_revision()) == 12


# --- 503s log why -------------------------------------------------------------------------------


def _unreachable(database_url: str, backend: str) -> tuple[str, str]:
    """A URL on `backend` that cannot be opened, and what the driver says about it."""
    if backend == "sqlite":
        return "sqlite+aiosqlite:////nonexistent-blogapi-folder/x.db", "unable to open database file"
    url = make_url(database_url).set(port=1, username="blogapi", password=PASSWORD_IN_URL)
    message = "Connect call failed" if backend == "postgresql" else "Can't connect"
    return url.render_as_string(hide_password=False), message


async def test_a_503_for_an_unreachable_database_logs_the_drivers_message_without_the_password(
    settings: Settings, database_url: str, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    url, message = _unreachable(database_url, backend)
    with caplog.at_level(logging.ERROR):
        async with serving(_on(settings, url)) as client:
            api = await client.get("/api/v1/posts")
            ready = await client.get(READY)
    assert_problem(api, 503)
    assert_problem(ready, 503)
    lines = [record.getMessage() for record in caplog.records]
    assert any("GET /api/v1/posts" in line and message in line for line in lines), lines
    assert any(line.startswith("not ready") and message in line for line in lines), lines
    assert PASSWORD_IN_URL not in caplog.text


@pytest.mark.backends("sqlite")
async def test_a_503_logs_the_databases_message_but_not_the_statements_parameters(
    settings: Settings, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = _on(settings, database_url)

    @app.get("/missing-table")
    async def missing_table(request: Request) -> None:
        async with get_database(request).engine.connect() as connection:
            await connection.execute(text("SELECT id FROM no_table WHERE name = :name"), {"name": PARAMETER})

    with caplog.at_level(logging.ERROR, logger="blogapi.errors"):
        async with serving(app) as client:
            response = await client.get("/missing-table")
    assert_problem(response, 503)
    assert "no such table: no_table" in caplog.text
    assert PARAMETER not in caplog.text
    assert PARAMETER not in response.text


class _Request:
    """Just what `database_cause` reads of a request: the app's settings."""

    def __init__(self, settings: Settings) -> None:
        self.app = type("App", (), {"state": type("State", (), {"settings": settings})()})()


def test_the_cause_masks_parameters_the_password_and_the_secret_key_the_driver_repeats() -> None:
    with_password = Settings(
        database_url=f"postgresql+asyncpg://blogapi:{PASSWORD_IN_URL}@db.example/blogapi",
        secret_key=TEST_SECRET,
        environment=Environment.TEST,
        _env_file=None,
    )
    secret = with_password.secret_key.get_secret_value()
    said = f"invalid input for $1: '{PARAMETER}'; login {PASSWORD_IN_URL}; {secret}; id 7"
    error = sa_exc.OperationalError("SELECT :name, :id", {"name": PARAMETER, "id": 7}, Exception(said))
    request: Any = _Request(with_password)
    cause = database_cause(request, error)
    assert cause == "Exception: invalid input for $1: '***'; login ***; ***; id 7"


# --- version -----------------------------------------------------------------------------------


async def test_version_gives_the_package_version_and_the_databases_schema_revision_read_once(
    client: httpx.AsyncClient, statements: StatementCounter
) -> None:
    first = await client.get("/version")
    assert first.status_code == 200, first.text
    assert first.json() == {
        "version": __version__,
        "revision": None,
        "schema_revision": head_revision(),
        "expected_schema_revision": head_revision(),
    }
    assert statements.count >= 1
    statements.reset()
    again = await client.get("/version")
    assert again.json() == first.json()
    assert statements.count == 0


async def test_version_gives_the_source_revision_from_blogapi_revision(
    settings: Settings, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BLOGAPI_REVISION", "0123abc")
    revised = Settings(**settings.model_dump(exclude={"revision"}), _env_file=None)
    assert revised.revision == "0123abc"
    async with serving(create_app(revised, database)) as client:
        response = await client.get("/version")
    assert response.json()["revision"] == "0123abc"


async def test_version_answers_with_an_unknown_schema_revision_while_the_database_is_unreachable(
    settings: Settings, tmp_path: Path
) -> None:
    unreachable = f"sqlite+aiosqlite:///{tmp_path / 'no-such-folder' / 'blogapi.db'}"
    async with serving(_on(settings, unreachable)) as client:
        response = await client.get("/version")
    assert response.status_code == 200, response.text
    assert response.json()["schema_revision"] is None
    assert response.json()["expected_schema_revision"] == head_revision()


def test_version_is_declared_in_the_openapi_document(settings: Settings) -> None:
    operation = create_app(settings).openapi()["paths"]["/version"]["get"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Version"
    }
