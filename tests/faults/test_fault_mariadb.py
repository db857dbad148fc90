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
    assert_whole_and_stored,
    await_recovery,
    create_writers,
    failure_report,
    run_load,
    running_app,
    tag_counts,
    unavailable,
)

POOL_TIMEOUT = 2.0
REQUEST_TIMEOUT = POOL_TIMEOUT + 8


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
