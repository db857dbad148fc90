"""Reads from a PostgreSQL streaming replica, with read-your-writes (issue 12, part 4).

The replica is the one `deploy/replica.sh start` makes (a `pg_basebackup -R` copy of the
test PostgreSQL, on 127.0.0.1:$BLOGAPI_TEST_REPLICA_PORT, 5433 by default): it holds the
test database as the primary does. Without it the tests are skipped, or fail when
BLOGAPI_TEST_REQUIRE includes `replica` (as CI sets it).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import BACKENDS, REQUIRED, Account, Accounts, serving
from sqlalchemy import Connection, event, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from blogapi.config import Settings
from blogapi.db import COMMIT_LSN_HEADER, Database, ReadRoute, _read_route, format_lsn, parse_lsn
from blogapi.main import create_app

pytestmark = [
    pytest.mark.backends("postgresql"),
    pytest.mark.not_through_pgbouncer("the replica streams from the primary itself, not through PgBouncer"),
]

API = "/api/v1"
SCRIPT = Path(__file__).parents[1] / "deploy" / "replica.sh"
REPLICA_PORT = int(os.environ.get("BLOGAPI_TEST_REPLICA_PORT", "5433"))


@dataclass
class Replicated:
    """An app whose reads go to the replica(s) of READ_DATABASE_URL."""

    client: httpx.AsyncClient
    database: Database
    accounts: Accounts
    replica_reads: list[str]
    """Every statement a replica ran for the app (its replica engine's, monitor included)."""

    async def health(self) -> dict[str, Any]:
        response = await self.client.get("/health/ready")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


ReplicatedFactory = Callable[..., AbstractAsyncContextManager[Replicated]]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port  # closed again: nothing listens there


@pytest.fixture
async def replica_url(database_url: str) -> str:
    """The test database on the running replica; a skip (or, when required, a failure) without it."""
    url = make_url(database_url).set(port=REPLICA_PORT).render_as_string(hide_password=False)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with asyncio.timeout(10), engine.connect() as connection:
            in_recovery = await connection.scalar(text("SELECT pg_is_in_recovery()"))
    except Exception as exc:
        in_recovery, why = None, f"{exc.__class__.__name__}: {exc}"
    finally:
        await engine.dispose()
    if in_recovery is not True:
        where = make_url(url).render_as_string(hide_password=True)
        reason = f"no streaming replica at {where} (`deploy/replica.sh start` makes one)" + (
            f": {why}" if in_recovery is None else ": it is not in recovery"
        )
        if "replica" in REQUIRED:
            pytest.fail(f"required {reason}", pytrace=False)
        pytest.skip(reason)
    return url


@pytest.fixture
def replicated(settings: Settings, database: Database, replica_url: str) -> ReplicatedFactory:
    """Start an app reading from `replica_urls` (default: the replica), with `overrides` of its settings.

    `database` (the conftest's) empties the tables afterwards.
    """

    @asynccontextmanager
    async def start(replica_urls: list[str] | None = None, **overrides: Any) -> AsyncIterator[Replicated]:
        replica_settings = settings.model_copy(
            update={"read_database_url": replica_urls or [replica_url], **overrides}
        )
        app_database = Database.from_settings(replica_settings)
        reads: list[str] = []
        for replica in app_database.read_engine.replicas:
            event.listen(replica.engine.sync_engine, "before_cursor_execute", _recorder(reads))
        try:
            async with serving(create_app(replica_settings, app_database)) as client:
                if replica_urls is None:
                    await _caught_up(app_database.read_engine.replicas[0].engine, database.engine)
                await app_database.read_engine.check()
                yield Replicated(
                    client, app_database, Accounts(client, app_database, replica_settings), reads
                )
        finally:
            await app_database.dispose()

    return start


def _recorder(reads: list[str]) -> Callable[..., None]:
    def record(_connection: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        reads.append(statement)

    return record


async def _caught_up(replica: AsyncEngine, primary: AsyncEngine) -> None:
    """Wait until the replica has replayed what the primary has now (the schema, earlier tests)."""
    async with primary.connect() as connection:
        target = parse_lsn(await connection.scalar(text("SELECT pg_current_wal_insert_lsn()::text")))
    async with replica.connect() as connection:
        for _ in range(600):
            replayed = parse_lsn(await connection.scalar(text("SELECT pg_last_wal_replay_lsn()::text")))
            if replayed is not None and target is not None and replayed >= target:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the replica did not replay {target}")


async def _replay(replica_url: str, action: str) -> None:
    engine = create_async_engine(replica_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f"SELECT pg_wal_replay_{action}()"))
    finally:
        await engine.dispose()


@asynccontextmanager
async def replay_paused(replica_url: str) -> AsyncIterator[None]:
    await _replay(replica_url, "pause")
    try:
        yield
    finally:
        await _replay(replica_url, "resume")


async def _post(replicated: Replicated, author: Account, title: str) -> httpx.Response:
    response = await replicated.client.post(f"{API}/posts", json={"title": title}, headers=author.headers)
    assert response.status_code == 201, response.text
    return response


def _seen(write: httpx.Response) -> dict[str, str]:
    return {COMMIT_LSN_HEADER: write.headers[COMMIT_LSN_HEADER]}


# The header's form.


@pytest.mark.parametrize(
    ("value", "lsn"),
    [
        ("0/0", 0),
        ("16/B374D848", 0x16_B374D848),
        ("16/b374d848", 0x16_B374D848),
        ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
    ],
)
def test_a_well_formed_commit_lsn_is_read_as_its_wal_position(value: str, lsn: int) -> None:
    assert parse_lsn(value) == lsn
    assert parse_lsn(format_lsn(lsn)) == lsn


@pytest.mark.parametrize(
    "value",
    [
        "",
        "16",
        "16/",
        "/B374D848",
        "16/B374D848/1",
        "1FFFFFFFF/0",
        "0/1FFFFFFFF",
        "g/0",
        " 0/0",
        "0x1/0",
        "+1/0",
    ],
)
def test_a_malformed_commit_lsn_is_ignored(value: str) -> None:
    assert parse_lsn(value) is None


def test_a_wal_position_is_written_as_postgresql_writes_it() -> None:
    assert format_lsn(0x16_B374D848) == "16/B374D848"
    assert format_lsn(0) == "0/0"


# Routing.


async def _served_by_replica(replicated: Replicated) -> bool:
    async with replicated.database.read_engine.connect() as connection:
        in_recovery: bool = await connection.scalar(text("SELECT pg_is_in_recovery()"))
        return in_recovery


async def test_reads_inside_a_writing_request_use_the_primary(replicated: ReplicatedFactory) -> None:
    async with replicated() as app:
        assert await _served_by_replica(app)  # outside a writing request: the replica
        token = _read_route.set(ReadRoute(on_primary=True))
        try:
            assert not await _served_by_replica(app)
        finally:
            _read_route.reset(token)


async def test_a_response_to_a_write_carries_the_primarys_position_and_a_read_none(
    replicated: ReplicatedFactory,
) -> None:
    async with replicated() as app:
        ann = await app.accounts.create()
        write = await _post(app, ann, "positioned")
        lsn = parse_lsn(write.headers[COMMIT_LSN_HEADER])
        assert lsn is not None
        assert lsn > 0
        read = await app.client.get(write.headers["location"], headers=_seen(write))
        assert read.status_code == 200
        assert COMMIT_LSN_HEADER not in read.headers


@pytest.mark.backends(*BACKENDS)
async def test_without_read_database_url_no_response_carries_a_commit_lsn(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    write = await client.post(f"{API}/posts", json={"title": "plain"}, headers=ann.headers)
    assert write.status_code == 201
    assert COMMIT_LSN_HEADER not in write.headers


async def test_300_writes_each_read_back_through_the_replica_see_their_write(
    replicated: ReplicatedFactory,
) -> None:
    async with replicated() as app:
        ann = await app.accounts.create()
        app.replica_reads.clear()
        seen = 0
        for number in range(300):
            write = await _post(app, ann, f"post {number}")
            read = await app.client.get(write.headers["location"], headers={**ann.headers, **_seen(write)})
            assert read.status_code == 200, read.text
            seen += read.json()["title"] == f"post {number}"
        assert seen == 300
        # The reads were the replica's (the monitor's own statement aside), not the primary's.
        post_reads = [statement for statement in app.replica_reads if "FROM post" in statement]
        assert post_reads


async def test_with_replay_paused_a_read_with_a_position_sees_its_write_and_one_without_answers(
    replicated: ReplicatedFactory, replica_url: str
) -> None:
    # A lag bound far away: the paused replica stays in use, for reads without a position.
    async with replicated(read_max_lag_seconds=3600) as app:
        ann = await app.accounts.create()
        before = await _post(app, ann, "before the pause")
        await app.client.get(before.headers["location"], headers=_seen(before))
        async with replay_paused(replica_url):
            write = await _post(app, ann, "while paused")
            with_position = await app.client.get(write.headers["location"], headers=_seen(write))
            without = await app.client.get(write.headers["location"])
            listed = await app.client.get(f"{API}/posts")
            health = await app.health()
        assert with_position.status_code == 200, with_position.text
        assert with_position.json()["title"] == "while paused"
        assert without.status_code == 404  # the replica's view: stale, and said so by the README
        assert listed.status_code == 200
        assert "before the pause" in {post["title"] for post in listed.json()["items"]}
        assert health["replicas"][0]["state"] == "streaming"


async def test_a_replica_lagging_past_the_bound_is_skipped_and_readiness_says_so(
    replicated: ReplicatedFactory, replica_url: str
) -> None:
    async with replicated(read_max_lag_seconds=0.5) as app:
        ann = await app.accounts.create()
        async with replay_paused(replica_url):
            write = await _post(app, ann, "unreplayed")
            states = []
            for _ in range(50):  # a check a second; the bound passes after one
                await app.database.read_engine.check()
                states.append((await app.health())["replicas"][0])
                if states[-1]["state"] == "lagging":
                    break
                await asyncio.sleep(0.1)
            without_position = await app.client.get(write.headers["location"])
        assert states[-1]["state"] == "lagging", states
        assert states[-1]["lag_seconds"] > 0.5
        assert without_position.status_code == 200  # from the primary
        assert without_position.json()["title"] == "unreplayed"


async def test_a_replica_that_is_down_is_skipped_without_an_error_and_readiness_says_so(
    replicated: ReplicatedFactory, database_url: str
) -> None:
    down = make_url(database_url).set(port=_closed_port()).render_as_string(hide_password=False)
    async with replicated([down]) as app:
        ann = await app.accounts.create()
        write = await _post(app, ann, "primary only")
        for headers in (_seen(write), {}):
            read = await app.client.get(write.headers["location"], headers=headers)
            assert read.status_code == 200, read.text
        health = await app.health()
        assert health["status"] == "ok"
        address = f"127.0.0.1:{make_url(down).port}/{make_url(down).database}"
        assert health["replicas"] == [{"address": address, "state": "down"}]  # no lag known


def _script(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), command],
        env=os.environ | {"REPLICA_PORT": str(REPLICA_PORT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_a_replica_stopped_under_reads_fails_no_read_and_readiness_says_so(
    replicated: ReplicatedFactory,
) -> None:
    async with replicated() as app:
        ann = await app.accounts.create()
        write = await _post(app, ann, "outlives the replica")
        for _ in range(5):  # pooled connections to the replica, about to be cut
            assert (await app.client.get(write.headers["location"], headers=_seen(write))).status_code == 200
        stopped = await asyncio.to_thread(_script, "stop")
        try:
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            statuses = [
                (await app.client.get(write.headers["location"], headers=headers)).status_code
                for headers in (_seen(write), {}) * 10
            ]
            await app.database.read_engine.check()
            health = await app.health()
        finally:
            started = await asyncio.to_thread(_script, "start")
        assert started.returncode == 0, started.stdout + started.stderr
        assert statuses == [200] * 20
        assert health["status"] == "ok"
        assert health["replicas"][0]["state"] == "down"


async def test_a_replica_that_goes_down_between_checks_is_skipped_at_the_next_read(
    replicated: ReplicatedFactory, database_url: str
) -> None:
    down = make_url(database_url).set(port=_closed_port()).render_as_string(hide_password=False)
    async with replicated([down]) as app:
        replica = app.database.read_engine.replicas[0]
        replica.state = "streaming"  # as the last check saw it
        ann = await app.accounts.create()
        write = await _post(app, ann, "still read")
        read = await app.client.get(write.headers["location"])
        assert read.status_code == 200, read.text
        assert app.database.read_engine.replicas[0].state == "down"


async def test_reads_take_turns_on_the_healthy_replicas_and_skip_one_that_is_down(
    replicated: ReplicatedFactory, replica_url: str, database_url: str
) -> None:
    down = make_url(database_url).set(port=_closed_port()).render_as_string(hide_password=False)
    async with replicated([replica_url, down, replica_url]) as app:
        assert [replica.state for replica in app.database.read_engine.replicas] == [
            "streaming",
            "down",
            "streaming",
        ]
        served: list[list[str]] = []
        for replica in app.database.read_engine.replicas:
            served.append([])
            event.listen(replica.engine.sync_engine, "before_cursor_execute", _recorder(served[-1]))
        listed = [(await app.client.get(f"{API}/posts")).status_code for _ in range(10)]
        assert listed == [200] * 10
        assert [sum("FROM post" in statement for statement in reads) for reads in served] == [5, 0, 5]


async def test_a_token_whose_login_the_replica_has_not_replayed_is_accepted(
    replicated: ReplicatedFactory, replica_url: str
) -> None:
    async with replicated(read_max_lag_seconds=3600) as app:
        ann = await app.accounts.create()
        async with replay_paused(replica_url):
            token = await app.accounts.login(ann.email)
            me = await app.client.get(f"{API}/users/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200, me.text
        assert me.json()["id"] == ann.id


async def test_a_logout_the_replica_has_not_replayed_still_ends_the_session_at_once(
    replicated: ReplicatedFactory, replica_url: str
) -> None:
    async with replicated(read_max_lag_seconds=3600) as app:
        ann = await app.accounts.create()
        token = await app.accounts.login(ann.email)
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await app.client.get(f"{API}/users/me", headers=bearer)).status_code == 200
        async with replay_paused(replica_url):
            logout = await app.client.post(f"{API}/auth/logout", headers=bearer)
            assert logout.status_code == 204, logout.text
            # The replica still holds the session as open; the verdict is the primary's.
            me = await app.client.get(f"{API}/users/me", headers=bearer)
            posts = await app.client.get(f"{API}/users/me/sessions", headers=bearer)
        assert me.status_code == 401, me.text
        assert posts.status_code == 401, posts.text


async def test_a_replica_host_that_went_silent_is_skipped_at_the_next_read(
    replicated: ReplicatedFactory, database_url: str
) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = make_url(database_url).set(port=silent.getsockname()[1]).render_as_string(hide_password=False)
        async with replicated([url]) as app:
            replica = app.database.read_engine.replicas[0]
            assert replica.state == "down"  # the check gave up on it
            replica.state = "streaming"  # as a check before it went silent saw it
            ann = await app.accounts.create()
            write = await _post(app, ann, "not stuck")
            read = await app.client.get(write.headers["location"])
            assert read.status_code == 200, read.text
            assert app.database.read_engine.replicas[0].state == "down"


async def test_a_malformed_commit_lsn_is_read_as_none_was_sent(replicated: ReplicatedFactory) -> None:
    async with replicated() as app:
        ann = await app.accounts.create()
        write = await _post(app, ann, "malformed")
        await app.client.get(write.headers["location"], headers=_seen(write))
        read = await app.client.get(write.headers["location"], headers={COMMIT_LSN_HEADER: "not-a-position"})
        assert read.status_code == 200
        assert read.json()["title"] == "malformed"


@pytest.mark.backends(*BACKENDS)
async def test_readiness_without_replicas_has_no_replica_field(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# Settings.


def test_read_database_url_takes_comma_separated_replicas_with_the_async_driver() -> None:
    settings = Settings(
        database_url="postgresql://root@primary/blogapi",
        read_database_url="postgres://root@replica1/blogapi, postgresql://root@replica2:5433/blogapi",
        _env_file=None,
    )
    assert settings.read_database_url == [
        "postgresql+asyncpg://root@replica1/blogapi",
        "postgresql+asyncpg://root@replica2:5433/blogapi",
    ]


@pytest.mark.parametrize(
    ("primary", "replica"),
    [("sqlite+aiosqlite:///blogapi.db", "postgresql://r/db"), ("postgresql://p/db", "mysql://r/db")],
)
def test_read_database_url_is_refused_unless_primary_and_replicas_are_postgresql(
    primary: str, replica: str
) -> None:
    with pytest.raises(ValueError, match="READ_DATABASE_URL needs PostgreSQL"):
        Settings(database_url=primary, read_database_url=replica, _env_file=None)


def test_read_database_url_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://root@primary/blogapi")
    monkeypatch.setenv(
        "READ_DATABASE_URL", "postgresql://root@replica1/blogapi,postgresql://root@replica2/blogapi"
    )
    monkeypatch.setenv("READ_MAX_LAG_SECONDS", "2.5")
    settings = Settings(_env_file=None)
    assert settings.read_database_url == [
        "postgresql+asyncpg://root@replica1/blogapi",
        "postgresql+asyncpg://root@replica2/blogapi",
    ]
    assert settings.read_max_lag_seconds == 2.5
    assert Settings(_env_file=None, read_database_url=[]).read_database_url == []
