"""blogapi through PgBouncer in transaction mode (issue 12, part 3), started by deploy/pgbouncer.sh.

Each test starts a private PgBouncer on a free port in front of the test PostgreSQL, with
two server connections (one for some tests), so that many client connections share them
as they would in production. Without Debian's pgbouncer the tests are skipped, or fail
when BLOGAPI_TEST_REQUIRE includes `pgbouncer` (as CI sets it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import PASSWORD, REQUIRED, serving
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError

from blogapi.cli import explain
from blogapi.config import DatabasePooler, Settings
from blogapi.db import Database, create_engine
from blogapi.errors import is_statement_timeout
from blogapi.main import create_app

pytestmark = pytest.mark.backends("postgresql")

SCRIPT = Path(__file__).parents[1] / "deploy" / "pgbouncer.sh"
PGBOUNCER = os.environ.get("BLOGAPI_TEST_PGBOUNCER", "/usr/sbin/pgbouncer")


@dataclass
class PrivatePgBouncer:
    url: str
    """The test database, through this PgBouncer."""
    env: dict[str, str]

    async def restart(self) -> None:
        """Stop (every client connection is closed) and start again on the same port."""
        for command in ("stop", "start"):
            done = await asyncio.to_thread(_script, command, self.env)
            assert done.returncode == 0, done.stdout + done.stderr


PgBouncerFactory = Callable[..., AbstractAsyncContextManager[PrivatePgBouncer]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _script(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), command], env=os.environ | env, capture_output=True, text=True, timeout=60, check=False
    )


def require_pgbouncer() -> None:
    """Skip without Debian's pgbouncer, or fail when BLOGAPI_TEST_REQUIRE names it."""
    if not os.access(PGBOUNCER, os.X_OK):
        reason = f"no PgBouncer at {PGBOUNCER} (`make deploy-tools` installs Debian's pgbouncer)"
        if "pgbouncer" in REQUIRED:
            pytest.fail(f"required {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def pgbouncer(database_url: str) -> PgBouncerFactory:
    """Start a private PgBouncer (`pool_size` server connections) in front of the test
    database's server; yields the database's URL through it."""
    require_pgbouncer()
    upstream = make_url(database_url)

    @asynccontextmanager
    async def start(pool_size: int = 2) -> AsyncIterator[PrivatePgBouncer]:
        # Not under pytest's tmp_path: as root, PgBouncer runs as `postgres`, kept out of it.
        directory = Path(tempfile.mkdtemp(prefix="blogapi-pgbouncer-"))
        port = _free_port()
        env = {
            "PGBOUNCER_BIN": PGBOUNCER,
            "PGBOUNCER_PORT": str(port),
            "PGBOUNCER_DIR": str(directory),
            "PGBOUNCER_UPSTREAM_HOST": upstream.host or "127.0.0.1",
            "PGBOUNCER_UPSTREAM_PORT": str(upstream.port or 5432),
            "PGBOUNCER_POOL_SIZE": str(pool_size),
            "PGBOUNCER_USERS": upstream.username or "postgres",
        }
        started = await asyncio.to_thread(_script, "start", env)
        assert started.returncode == 0, started.stdout + started.stderr
        try:
            yield PrivatePgBouncer(upstream.set(port=port).render_as_string(hide_password=False), env)
        finally:
            stopped = await asyncio.to_thread(_script, "stop", env)
            shutil.rmtree(directory, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr

    return start


def _pooled(settings: Settings, url: str, **changes: object) -> Settings:
    return settings.model_copy(
        update={"database_url": url, "database_pooler": DatabasePooler.PGBOUNCER} | changes
    )


async def test_the_pgbouncer_script_starts_once_and_stops_when_asked(database_url: str) -> None:
    require_pgbouncer()
    directory = Path(tempfile.mkdtemp(prefix="blogapi-pgbouncer-"))
    upstream = make_url(database_url)
    env = {
        "PGBOUNCER_BIN": PGBOUNCER,
        "PGBOUNCER_PORT": str(_free_port()),
        "PGBOUNCER_DIR": str(directory),
        "PGBOUNCER_UPSTREAM_PORT": str(upstream.port or 5432),
        "PGBOUNCER_USERS": upstream.username or "postgres",
    }
    try:
        first = _script("start", env)
        assert first.returncode == 0, first.stderr
        pid = (directory / "pgbouncer.pid").read_text().strip()
        again = _script("start", env)
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout
        assert (directory / "pgbouncer.pid").read_text().strip() == pid
        assert "pool_mode = transaction" in (directory / "pgbouncer.ini").read_text()
        assert _script("status", env).returncode == 0
        assert _script("stop", env).returncode == 0
        assert _script("status", env).returncode == 3
        assert _script("stop", env).returncode == 0, "stopping a stopped PgBouncer is not an error"
    finally:
        _script("stop", env)
        shutil.rmtree(directory, ignore_errors=True)


async def test_through_pgbouncer_the_app_serves_concurrent_reads_and_writes_on_two_server_connections(
    pgbouncer: PgBouncerFactory, settings: Settings, database: Database
) -> None:
    async with pgbouncer(pool_size=2) as bouncer:
        url = bouncer.url
        app = create_app(_pooled(settings, url, pool_size=10))
        async with serving(app) as client:
            assert (await client.get("/health/ready")).status_code == 200
            signed_up = await client.post(
                "/api/v1/users", json={"name": "Pooled", "email": "pooled@example.com", "password": PASSWORD}
            )
            assert signed_up.status_code == 201, signed_up.text
            token = await client.post(
                "/api/v1/auth/token", data={"username": "pooled@example.com", "password": PASSWORD}
            )
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}

            async def write_then_read(number: int) -> list[httpx.Response]:
                posted = await client.post(
                    "/api/v1/posts",
                    json={"title": f"pooled {number}", "body": "through PgBouncer", "tags": [f"t{number}"]},
                    headers=headers,
                )
                if posted.status_code != 201:
                    return [posted]
                read = await client.get(f"/api/v1/posts/{posted.json()['id']}")
                listed = await client.get("/api/v1/posts", params={"limit": 5})
                return [posted, read, listed]

            results = await asyncio.gather(*(write_then_read(number) for number in range(30)))
    failed = [
        (r.request.method, r.status_code, r.text[:200]) for rs in results for r in rs if r.status_code >= 300
    ]
    assert not failed
    assert sum(len(rs) for rs in results) == 90


async def test_without_the_setting_pgbouncer_refuses_the_apps_connections(
    pgbouncer: PgBouncerFactory, settings: Settings
) -> None:
    async with pgbouncer() as bouncer:
        url = bouncer.url
        engine = create_engine(
            settings.model_copy(update={"database_url": url, "database_pooler": DatabasePooler.NONE})
        )
        try:
            with pytest.raises(DBAPIError, match="unsupported startup parameter"):
                async with engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
        finally:
            await engine.dispose()


async def test_through_pgbouncer_the_statement_limit_holds_per_transaction_and_leaks_to_no_other_client(
    pgbouncer: PgBouncerFactory, settings: Settings
) -> None:
    async with pgbouncer(pool_size=1) as bouncer:
        url = bouncer.url
        app_database = Database.from_engine(create_engine(_pooled(settings, url, statement_timeout_ms=100)))
        unlimited = create_engine(_pooled(settings, url), pooled=False)
        try:
            async with app_database.read_engine.connect() as connection:
                with pytest.raises(DBAPIError) as cut_off:
                    await connection.execute(text("SELECT pg_sleep(1)"))
            assert is_statement_timeout(cut_off.value), cut_off.value
            async with app_database.read_engine.connect() as connection:
                assert await connection.scalar(text("SHOW statement_timeout")) == "100ms"
            async with app_database.sessionmaker.begin() as session:
                assert await session.scalar(text("SHOW statement_timeout")) == "100ms"
            # The one server connection the app used, seen by a client without a limit.
            async with unlimited.connect() as connection:
                assert await connection.scalar(text("SHOW statement_timeout")) == "0"
                assert await connection.scalar(text("SELECT pg_sleep(0.3)::text")) == ""
        finally:
            await app_database.dispose()
            await unlimited.dispose()


async def test_a_pgbouncer_restart_fails_no_request_its_closed_connections_are_replaced(
    pgbouncer: PgBouncerFactory, settings: Settings, database: Database
) -> None:
    """PgBouncer's restart closes every client connection in the app's pool: the first
    request to meet one fails its first attempt (at SET LOCAL), and runs again."""
    async with pgbouncer() as bouncer:
        app = create_app(_pooled(settings, bouncer.url, pool_size=4))
        async with serving(app) as client:
            warm = await asyncio.gather(*(client.get("/api/v1/posts") for _ in range(4)))
            assert [response.status_code for response in warm] == [200] * 4
            await bouncer.restart()
            after = [await client.get("/api/v1/posts") for _ in range(6)]
            signed_up = await client.post(
                "/api/v1/users", json={"name": "After", "email": "after@example.com", "password": PASSWORD}
            )
    assert [response.status_code for response in after] == [200] * 6, [r.text for r in after]
    assert signed_up.status_code == 201, signed_up.text


async def test_a_database_missing_behind_pgbouncer_is_explained_as_missing(
    pgbouncer: PgBouncerFactory, settings: Settings
) -> None:
    """PgBouncer relays PostgreSQL's 3D000 as a protocol error (08P01): still "does not exist"."""
    async with pgbouncer() as bouncer:
        missing = make_url(bouncer.url).set(database="blogapi_scale_never_created")
        engine = create_engine(_pooled(settings, missing.render_as_string(hide_password=False)), pooled=False)
        try:
            with pytest.raises(DBAPIError) as refused:
                async with engine.connect():
                    pass
        finally:
            await engine.dispose()
    assert "does not exist: `blogapi db upgrade` creates it" in (explain(refused.value) or "")
