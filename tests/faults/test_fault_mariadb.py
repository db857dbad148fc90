"""MariaDB going away under the app: a restart in the middle of a load.

Runs on a private mariadbd the session starts (see fault_support), never on the shared one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fault_support import (
    PrivateMariaDB,
    ServerUnavailable,
    assert_killed_idle_connections_are_replaced,
    assert_whole_and_stored,
    await_recovery,
    create_writers,
    failure_report,
    run_load,
    running_app,
    tag_counts,
    unavailable,
)
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

POOL_TIMEOUT = 2.0
REQUEST_TIMEOUT = POOL_TIMEOUT + 8
UNKNOWN_THREAD = 1094  # ER_NO_SUCH_THREAD


@pytest.fixture(scope="session")
def private_mariadb() -> Iterator[PrivateMariaDB]:
    try:
        server = PrivateMariaDB.create()
    except ServerUnavailable as exc:
        unavailable("mariadb", str(exc))
    try:
        yield server
    finally:
        server.remove()


async def test_a_mariadb_restart_under_load_answers_503_never_500_and_loses_no_acknowledged_post(
    private_mariadb: PrivateMariaDB, caplog: pytest.LogCaptureFixture
) -> None:
    url = await private_mariadb.new_database()
    writers = await create_writers(url, 4)

    async def restart() -> None:
        await asyncio.to_thread(private_mariadb.stop)  # a clean shutdown: every connection is closed
        await asyncio.sleep(1.5)
        await asyncio.to_thread(private_mariadb.start)

    async with running_app(url, pool_size=4, max_overflow=2, pool_timeout=POOL_TIMEOUT) as app:
        result = await run_load(
            app.client, writers, fault=restart, fault_after=3, recovery=4, request_timeout=REQUEST_TIMEOUT
        )
        after = await await_recovery(app.client, writers[0])

    assert not result.failures, failure_report(result, caplog)
    assert result.unavailable, f"no request met the outage (statuses {dict(result.statuses)})"
    assert result.acknowledged, f"no post was acknowledged (statuses {dict(result.statuses)})"
    assert_whole_and_stored(result.acknowledged | set(after), await tag_counts(url))


async def _kill_app_connections(url: str) -> int:
    """KILL every connection to the app's database but this one, as an operator (or a proxy) would."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with asyncio.timeout(30), engine.connect() as connection:
            ids = (
                await connection.scalars(
                    text(
                        "SELECT id FROM information_schema.processlist"
                        " WHERE db = DATABASE() AND id <> CONNECTION_ID()"
                    )
                )
            ).all()
            killed = 0
            for connection_id in ids:
                try:
                    await connection.execute(text(f"KILL CONNECTION {int(connection_id)}"))
                    killed += 1
                except OperationalError as exc:
                    if exc.orig is None or exc.orig.args[0] != UNKNOWN_THREAD:
                        raise  # not a connection that closed since it was listed
            return killed
    finally:
        await engine.dispose()


async def test_killed_idle_connections_are_replaced_and_the_next_requests_succeed(
    private_mariadb: PrivateMariaDB,
) -> None:
    url = await private_mariadb.new_database()
    await assert_killed_idle_connections_are_replaced(
        url,
        lambda: _kill_app_connections(url),
        read_first=True,
        pool_timeout=POOL_TIMEOUT,
        request_timeout=REQUEST_TIMEOUT,
    )


async def test_connections_killed_under_load_fail_no_read_and_at_most_the_commits_in_flight(
    private_mariadb: PrivateMariaDB, caplog: pytest.LogCaptureFixture
) -> None:
    url = await private_mariadb.new_database()
    writers = await create_writers(url, 4)
    killed: list[int] = []

    async def kill() -> None:
        for _ in range(3):
            killed.append(await _kill_app_connections(url))
            await asyncio.sleep(0.3)

    async with running_app(url, pool_size=4, max_overflow=2, pool_timeout=POOL_TIMEOUT) as app:
        result = await run_load(
            app.client, writers, fault=kill, fault_after=1.5, recovery=2, request_timeout=REQUEST_TIMEOUT
        )
        after = await await_recovery(app.client, writers[0], attempts=1)

    assert sum(killed) >= 1, "no app connection was killed"
    assert not result.failures, failure_report(result, caplog)
    # A read killed mid-statement runs again on a new connection; only a write whose COMMIT
    # was cut off (its outcome unknown) may answer 503.
    assert result.unavailable_by_method["GET"] == 0, dict(result.unavailable_by_method)
    assert result.unavailable_by_method["POST"] <= 3 * len(writers), dict(result.unavailable_by_method)
    assert_whole_and_stored(result.acknowledged | set(after), await tag_counts(url))
