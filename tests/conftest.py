"""The database matrix: every test that uses `client` runs on SQLite, PostgreSQL and MariaDB.

SQLite always runs (a temporary file, WAL). PostgreSQL and MariaDB run when reachable at
BLOGAPI_TEST_POSTGRES_URL / BLOGAPI_TEST_MARIADB_URL and are skipped, with the reason
printed at the end, when not. BLOGAPI_TEST_REQUIRE=postgresql,mariadb (as CI sets it)
turns an unreachable backend into a failure instead.

The browser tests drive Debian's chromium (BLOGAPI_TEST_CHROMIUM, default /usr/bin/chromium;
`make browser` installs it). Without it they are skipped, with the reason printed at the
end, unless BLOGAPI_TEST_REQUIRE includes `chromium` (as CI sets it).

Tests commit for real, each on the app's real session code, and every table is emptied
after each test: commit timing, races and faults cannot be tested inside a rolled-back
outer transaction.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from alembic import command
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import Connection, Dialect, Engine, MetaData, delete, event, make_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import QueuePool

from blogapi.auth import security
from blogapi.cli import alembic_config
from blogapi.config import DatabasePooler, Environment, Settings
from blogapi.db import Database, create_database, transaction_pooler_connect_args
from blogapi.main import create_app
from blogapi.models import Base
from blogapi.users import service as users_service
from blogapi.users.schemas import UserCreate

BACKENDS = ("sqlite", "postgresql", "mariadb")
SERVER_URLS = {
    "postgresql": os.environ.get(
        "BLOGAPI_TEST_POSTGRES_URL", "postgresql+asyncpg://root@127.0.0.1:5432/blogapi_test"
    ),
    "mariadb": os.environ.get(
        "BLOGAPI_TEST_MARIADB_URL", "mysql+aiomysql://root@127.0.0.1:3306/blogapi_test"
    ),
}
REQUIRED = {name.strip() for name in os.environ.get("BLOGAPI_TEST_REQUIRE", "").split(",") if name.strip()}
# BLOGAPI_TEST_BACKENDS=postgresql runs only the tests on those backends (CI's second
# PostgreSQL run, through PgBouncer: the rest ran already).
ONLY_BACKENDS = {
    name.strip() for name in os.environ.get("BLOGAPI_TEST_BACKENDS", "").split(",") if name.strip()
}
# BLOGAPI_TEST_POSTGRES_POOLER=pgbouncer: BLOGAPI_TEST_POSTGRES_URL is a PgBouncer in
# transaction mode; the app runs with DATABASE_POOLER=pgbouncer.
POSTGRES_POOLER = DatabasePooler(os.environ.get("BLOGAPI_TEST_POSTGRES_POOLER", "none"))
CHROMIUM = os.environ.get("BLOGAPI_TEST_CHROMIUM", "/usr/bin/chromium")
TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"
PASSWORD = "correct horse battery"

_skipped_backends: dict[str, str] = {}
_tested_backends: set[str] = set()
_browser: dict[str, str] = {}  # "tested" or "skipped" -> what


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): run only on these backends")
    config.addinivalue_line(
        "markers",
        "not_through_pgbouncer(reason): skipped, with the reason, when PostgreSQL is behind PgBouncer",
    )
    if POSTGRES_POOLER is DatabasePooler.PGBOUNCER:
        # The engines tests make themselves (to set up, inspect, clean up) go through
        # PgBouncer too: they get the options the app's engines get from DATABASE_POOLER.
        event.listen(Engine, "do_connect", _through_transaction_pooler)


def database_env(database_url: str) -> dict[str, str]:
    """The environment a blogapi process needs for `database_url`: with the test PgBouncer,
    DATABASE_POOLER too."""
    env = {"DATABASE_URL": database_url}
    if POSTGRES_POOLER is not DatabasePooler.NONE and database_url.startswith("postgresql"):
        env["DATABASE_POOLER"] = POSTGRES_POOLER.value
    return env


def _through_transaction_pooler(dialect: Dialect, _record: Any, _args: Any, params: dict[str, Any]) -> None:
    # Only the PgBouncer of BLOGAPI_TEST_POSTGRES_URL: tests of other servers (a private
    # PgBouncer, private PostgreSQL servers) see engines exactly as the app makes them.
    pooler = make_url(SERVER_URLS["postgresql"])
    if dialect.name == "postgresql" and params.get("port") == pooler.port:
        for name, value in transaction_pooler_connect_args().items():
            params.setdefault(name, value)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) a test's runs on backends its `backends` marker leaves out, and
    with BLOGAPI_TEST_BACKENDS every test that runs on none of those."""
    selected, deselected = [], []
    for item in items:
        marker = item.get_closest_marker("backends")
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("database_url") if callspec else None
        excluded = bool(ONLY_BACKENDS) and backend not in ONLY_BACKENDS
        if excluded or (marker and backend and backend not in marker.args):
            deselected.append(item)
            continue
        unpooled = item.get_closest_marker("not_through_pgbouncer")
        if unpooled and backend == "postgresql" and POSTGRES_POOLER is DatabasePooler.PGBOUNCER:
            item.add_marker(pytest.mark.skip(reason=f"not through PgBouncer: {unpooled.args[0]}"))
        selected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_sep("=", "database backends")
    ran = [name for name in BACKENDS if name in _tested_backends]
    terminalreporter.write_line(f"tested on: {', '.join(ran) or 'none'}")
    for name, reason in _skipped_backends.items():
        terminalreporter.write_line(f"SKIPPED {name}: {reason}", yellow=True)
    if "tested" in _browser:
        terminalreporter.write_line(f"browser tests ran on {_browser['tested']}")
    if "skipped" in _browser:
        terminalreporter.write_line(f"SKIPPED browser tests: {_browser['skipped']}", yellow=True)


async def _create_database(url: str) -> None:
    """Create the test database on its server if it does not exist yet."""
    await create_database(url)


def _drop_tables(connection: Connection) -> None:
    """Every table the database holds, not only ours: a run on another branch may have left more."""
    existing = MetaData()
    with warnings.catch_warnings():  # reflection skips what it cannot read (expression indexes)
        warnings.simplefilter("ignore", sa_exc.SAWarning)
        existing.reflect(connection)
    existing.drop_all(connection)


async def _drop_everything(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(_drop_tables)
    await engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


@pytest.fixture(scope="session", autouse=True)
def test_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """DATA_DIR for the whole run (the commands tests run included): never the user's own.

    Settings built without a DATA_DIR of their own keep their key and database here.
    """
    with pytest.MonkeyPatch.context() as patch:
        data_dir = tmp_path_factory.mktemp("data")
        patch.setenv("DATA_DIR", str(data_dir))
        yield data_dir


@pytest.fixture(scope="session", params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated, empty database on one backend, for the whole session."""
    backend: str = request.param
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'blogapi.db'}"
    else:
        url = SERVER_URLS[backend]
        try:
            await asyncio.wait_for(_create_database(url), timeout=10)
        except Exception as exc:
            where = make_url(url).render_as_string(hide_password=True)
            reason = f"{where} unreachable ({exc.__class__.__name__}: {exc})"
            if backend in REQUIRED:
                pytest.fail(f"required backend {reason}")
            _skipped_backends[backend] = reason
            pytest.skip(reason)
        await _drop_everything(url)
    # env.py runs its own event loop: migrate from a thread, as the CLI would.
    await asyncio.to_thread(upgrade, url)
    _tested_backends.add(backend)
    return url


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable the browser tests drive; a skip (or, when required, a failure) if missing."""
    if os.access(CHROMIUM, os.X_OK):
        _browser["tested"] = CHROMIUM
        return CHROMIUM
    reason = f"no Chromium at {CHROMIUM} (`make browser` installs Debian's chromium)"
    if "chromium" in REQUIRED:
        pytest.fail(f"required browser missing: {reason}")
    _browser["skipped"] = reason
    pytest.skip(reason)


@pytest.fixture
async def scratch_database_url(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database (no tables) beside the session's, on the same backend.

    For tests that migrate, downgrade or seed, so the shared schema is never disturbed.
    """
    if make_url(database_url).get_backend_name() == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'scratch.db'}"
        return
    url = make_url(database_url).set(database=f"{make_url(database_url).database}_scratch")
    rendered = url.render_as_string(hide_password=False)
    await _create_database(rendered)
    await _drop_everything(rendered)
    yield rendered
    await _drop_everything(rendered)


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id still, with test-sized cost; one test checks the production parameters."""
    monkeypatch.setattr(
        security,
        "_password_hash",
        PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),)),
    )
    security._dummy_hash.cache_clear()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key=TEST_SECRET,
        environment=Environment.TEST,
        max_body_bytes=64 * 1024,
        # Every account a test makes signs up from the test client's one address.
        signups_per_address=100_000,
        database_pooler=POSTGRES_POOLER if database_url.startswith("postgresql") else DatabasePooler.NONE,
        _env_file=None,
    )


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    database = Database.from_settings(settings)
    yield database
    # Nothing a test did may leave a connection checked out (PITFALLS 0.5).
    pool = database.engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedout() == 0, "a connection was not returned to the pool"
    async with database.sessionmaker.begin() as session:
        for table in reversed(Base.metadata.sorted_tables):
            await session.execute(delete(table))
    await database.dispose()


@asynccontextmanager
async def serving(app: FastAPI, **transport_options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` in-process, its lifespan run (ASGITransport alone does not run it)."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, **transport_options)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
async def app_and_client(
    settings: Settings, database: Database
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(settings, database)
    async with serving(app) as client:
        yield app, client


@pytest.fixture
def client(app_and_client: tuple[Any, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app_and_client[1]


@dataclass
class Account:
    id: int
    email: str
    name: str
    token: str
    headers: dict[str, str] = field(default_factory=dict)
    refresh_token: str = ""

    @property
    def session_id(self) -> int:
        """The login session of `token` (its `sid` claim)."""
        return int(jwt.decode(self.token, options={"verify_signature": False})["sid"])


class Accounts:
    """Signs users up and logs them in through the API; admins are made by the service."""

    def __init__(self, client: httpx.AsyncClient, database: Database, settings: Settings) -> None:
        self.client = client
        self.database = database
        self.settings = settings
        self.count = 0

    async def login(self, email: str, password: str = PASSWORD) -> str:
        """A new session's access token."""
        token: str = (await self.login_tokens(email, password))["access_token"]
        return token

    async def login_tokens(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        """A new session's token response: access and refresh token."""
        response = await self.client.post(
            "/api/v1/auth/token", data={"username": email, "password": password}
        )
        assert response.status_code == 200, response.text
        tokens: dict[str, Any] = response.json()
        return tokens

    async def create(self, name: str | None = None, *, admin: bool = False) -> Account:
        self.count += 1
        name = name or f"User {self.count}"
        email = f"user{self.count}@example.com"
        if admin:
            async with self.database.sessionmaker.begin() as session:
                user = await users_service.create_user(
                    session,
                    UserCreate(name=name, email=email, password=PASSWORD),
                    self.settings,
                    is_admin=True,
                )
                user_id = user.id
        else:
            response = await self.client.post(
                "/api/v1/users", json={"name": name, "email": email, "password": PASSWORD}
            )
            assert response.status_code == 201, response.text
            user_id = response.json()["id"]
        tokens = await self.login_tokens(email)
        token = tokens["access_token"]
        return Account(
            user_id, email, name, token, {"Authorization": f"Bearer {token}"}, tokens["refresh_token"]
        )


@pytest.fixture
def accounts(client: httpx.AsyncClient, database: Database, settings: Settings) -> Accounts:
    return Accounts(client, database, settings)


@dataclass
class StatementCounter:
    statements: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.statements)

    def reset(self) -> None:
        self.statements.clear()


@pytest.fixture
def statements(database: Database) -> Iterator[StatementCounter]:
    """Every SQL statement the app sends, to hold list endpoints to a fixed budget."""
    counter = StatementCounter()

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        counter.statements.append(statement)

    event.listen(database.engine.sync_engine, "before_cursor_execute", record)
    yield counter
    event.remove(database.engine.sync_engine, "before_cursor_execute", record)


def backend_of(url: str) -> str:
    return {"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mariadb"}[
        make_url(url).get_backend_name()
    ]


@pytest.fixture
def backend(database_url: str) -> str:
    return backend_of(database_url)


TESTS_DIR = Path(__file__).parent
PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    """An RFC 9457 problem with one of `statuses`; returns the parsed body."""
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"] == PROBLEM, response.headers
    problem: dict[str, Any] = response.json()
    assert problem["status"] == response.status_code
    assert problem["title"] == HTTPStatus(response.status_code).phrase
    assert isinstance(problem["type"], str)
    assert problem["type"]
    assert isinstance(problem["detail"], str)
    assert problem["detail"]
    return problem
