"""PostgreSQL going away under the app: a restart, killed connections, impatient clients, a full pool.

Every test here runs on a private PostgreSQL server the session starts (see fault_support),
never on the shared one.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fault_support import (
    PrivatePostgres,
    ServerUnavailable,
    Writer,
    assert_killed_idle_connections_are_replaced,
    assert_whole_and_stored,
    await_recovery,
    checked_out,
    create_writers,
    failure_report,
    free_port,
    post_body,
    run_load,
    running_app,
    serve,
    server_env,
    tag_counts,
    unavailable,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

POOL_TIMEOUT = 2.0
# A request may wait POOL_TIMEOUT for a connection, then run a few statements: past this it hangs.
REQUEST_TIMEOUT = POOL_TIMEOUT + 8
PROBLEM = "application/problem+json"


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    try:
        server = PrivatePostgres.create()
    except ServerUnavailable as exc:
        unavailable("postgresql", str(exc))
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
async def postgres_url(private_postgres: PrivatePostgres) -> str:
    return await private_postgres.new_database()


async def _scalars(url: str, query: str, **parameters: str) -> list[int]:
    """Run a query on a connection of its own (not the app's, not named blogapi)."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with asyncio.timeout(30), engine.connect() as connection:
            rows = await connection.execute(text(query), parameters)
            return [int(value) for value in rows.scalars()]
    finally:
        await engine.dispose()


async def _terminate_app_connections(url: str) -> int:
    killed = await _scalars(
        url,
        "SELECT CASE WHEN pg_terminate_backend(pid) THEN 1 ELSE 0 END FROM pg_stat_activity"
        " WHERE application_name = 'blogapi' AND pid <> pg_backend_pid()",
    )
    return sum(killed)


async def _app_connections(url: str, state: str = "%") -> int:
    [count] = await _scalars(
        url,
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'blogapi' AND coalesce(state, '') LIKE :state",
        state=state,
    )
    return count


async def test_a_postgresql_restart_under_load_answers_503_never_500_and_loses_no_acknowledged_post(
    private_postgres: PrivatePostgres, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    writers = await create_writers(postgres_url, 4)

    async def restart() -> None:
        await asyncio.to_thread(private_postgres.stop, "fast")
        await asyncio.sleep(1.5)  # an outage the load runs into, not only a blip
        await asyncio.to_thread(private_postgres.start)

    async with running_app(postgres_url, pool_size=4, max_overflow=2, pool_timeout=POOL_TIMEOUT) as app:
        result = await run_load(
            app.client, writers, fault=restart, fault_after=3, recovery=4, request_timeout=REQUEST_TIMEOUT
        )
        after = await await_recovery(app.client, writers[0])

    assert not result.failures, failure_report(result, caplog)
    assert result.unavailable, f"no request met the outage (statuses {dict(result.statuses)})"
    assert result.acknowledged, f"no post was acknowledged (statuses {dict(result.statuses)})"
    assert_whole_and_stored(result.acknowledged | set(after), await tag_counts(postgres_url))


async def test_killed_idle_connections_are_replaced_and_the_next_requests_succeed(postgres_url: str) -> None:
    await assert_killed_idle_connections_are_replaced(
        postgres_url,
        lambda: _terminate_app_connections(postgres_url),
        read_first=False,
        pool_timeout=POOL_TIMEOUT,
        request_timeout=REQUEST_TIMEOUT,
    )


async def test_connections_killed_under_load_fail_at_most_the_requests_in_flight_with_503(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    writers = await create_writers(postgres_url, 4)
    killed: list[int] = []

    async def kill() -> None:
        killed.append(await _terminate_app_connections(postgres_url))

    async with running_app(postgres_url, pool_size=4, max_overflow=2, pool_timeout=POOL_TIMEOUT) as app:
        result = await run_load(
            app.client, writers, fault=kill, fault_after=1.5, recovery=2, request_timeout=REQUEST_TIMEOUT
        )
        after = await await_recovery(app.client, writers[0], attempts=1)

    assert killed[0] >= 1, "no app connection was killed"
    assert not result.failures, failure_report(result, caplog)
    # One request per client loop can have been in flight on a killed connection (a failed
    # COMMIT is not run again); a connection killed while idle in the pool fails no request:
    # the request that finds it dead runs again on a new one.
    assert len(result.unavailable) <= len(writers), dict(result.statuses)
    assert result.unavailable_by_method["GET"] == 0, dict(result.unavailable_by_method)  # reads rerun
    assert_whole_and_stored(result.acknowledged | set(after), await tag_counts(postgres_url))


async def _cut_off_requests(base_url: str, writer: Writer) -> tuple[int, list[httpx.Response]]:
    """30 requests from clients that give up after 50 ms; how many were cut off, and the answers."""

    async def attempt(client: httpx.AsyncClient, number: int) -> httpx.Response | None:
        try:
            if number % 3 == 2:
                return await client.get("/api/v1/posts", params={"limit": 50})
            return await client.post("/api/v1/posts", json=post_body(f"cut-{number}"), headers=writer.headers)
        except httpx.TimeoutException:
            return None

    async with httpx.AsyncClient(base_url=base_url, timeout=0.05) as impatient:
        outcomes = await asyncio.gather(*(attempt(impatient, number) for number in range(30)))
    return sum(outcome is None for outcome in outcomes), [outcome for outcome in outcomes if outcome]


def _abandon_bodies(port: int, writer: Writer, count: int) -> None:
    """Clients that send half a POST body and hang up."""
    body = b'{"title": "never finished", "tags": ["a", "b", "c"]}'
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            head = (
                "POST /api/v1/posts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Authorization: {writer.headers['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body[: len(body) // 2])


async def test_clients_that_hang_up_mid_request_leave_no_open_transaction_and_no_half_written_post(
    postgres_url: str, tmp_path: Path
) -> None:
    [writer] = await create_writers(postgres_url, 1)
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "blogapi.asgi:app", "--host", "127.0.0.1", "--port", str(port)]
    env = server_env(postgres_url, pool_size=2, max_overflow=0, pool_timeout=5)
    async with serve(argv, env, tmp_path, port) as server:
        cut, answered = await _cut_off_requests(server.base_url, writer)
        await asyncio.to_thread(_abandon_bodies, port, writer, 5)
        assert cut > 0, "every request was answered within 50 ms: none was cut off"
        assert all(response.status_code in (200, 201) for response in answered), [
            (response.status_code, response.text) for response in answered
        ]

        # The cut-off requests finish on the server; then no transaction may stay open.
        for _ in range(50):
            open_transactions = await _app_connections(postgres_url, "idle in transaction%")
            if open_transactions == 0:
                break
            await asyncio.sleep(0.2)
        assert open_transactions == 0, f"{open_transactions} connection(s) left idle in transaction"

        async with httpx.AsyncClient(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as patient:
            me = await patient.get("/api/v1/users/me", headers=writer.headers)
            posted = await patient.post("/api/v1/posts", json=post_body("patient"), headers=writer.headers)
        assert me.status_code == 200, me.text
        assert posted.status_code == 201, posted.text
        assert await _app_connections(postgres_url, "idle in transaction%") == 0
        assert await _app_connections(postgres_url) <= 2, "the pool opened more connections than its size"

    stored = await tag_counts(postgres_url)
    assert_whole_and_stored({posted.json()["id"]}, stored)
    assert len(stored) <= 20 + 1, "more posts stored than were sent"
    log = server.output()
    assert "Traceback" not in log, log[-5000:]
    assert '" 500' not in log, [line for line in log.splitlines() if '" 500' in line]


async def test_an_exhausted_pool_answers_503_with_retry_after_and_recovers_when_a_connection_frees(
    postgres_url: str,
) -> None:
    [writer] = await create_writers(postgres_url, 1)
    async with running_app(postgres_url, pool_size=1, max_overflow=0, pool_timeout=0.5) as app:
        async with app.database.engine.connect() as held:
            await held.execute(text("SELECT 1"))
            async with asyncio.timeout(REQUEST_TIMEOUT):
                listed = await app.client.get("/api/v1/posts")
                posted = await app.client.post(
                    "/api/v1/posts", json=post_body("refused"), headers=writer.headers
                )
                ready = await app.client.get("/health/ready")
        for response in (listed, posted, ready):
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"].isdigit()
            assert response.headers["content-type"] == PROBLEM
            assert response.json()["status"] == 503

        async with asyncio.timeout(REQUEST_TIMEOUT):
            listed = await app.client.get("/api/v1/posts")
            posted = await app.client.post(
                "/api/v1/posts", json=post_body("accepted"), headers=writer.headers
            )
        assert listed.status_code == 200, listed.text
        assert posted.status_code == 201, posted.text
        assert checked_out(app.database) == 0

    # The refused post was not half-stored: only the accepted one exists.
    assert await tag_counts(postgres_url) == {posted.json()["id"]: 3}


async def test_requests_cancelled_in_process_mid_query_return_their_connections_and_write_nothing_partial(
    postgres_url: str,
) -> None:
    """What an ASGI server that cancels the app on disconnect does: CancelledError anywhere in a request.

    The cancellation points are spread over the length of an uncancelled request, so they
    land before, during and after its queries and its commit.
    """
    [writer] = await create_writers(postgres_url, 1)
    async with running_app(postgres_url, pool_size=2, max_overflow=0, pool_timeout=POOL_TIMEOUT) as app:

        async def send(number: int) -> httpx.Response:
            if number % 3 == 2:
                return await app.client.get("/api/v1/posts", params={"limit": 50})
            return await app.client.post(
                "/api/v1/posts", json=post_body(f"cancel-{number}"), headers=writer.headers
            )

        loop = asyncio.get_running_loop()
        started = loop.time()
        for number in range(3):
            async with asyncio.timeout(REQUEST_TIMEOUT):
                assert (await send(number)).status_code in (200, 201)
        typical = (loop.time() - started) / 3

        async def cancelled(number: int, after: float) -> httpx.Response | None:
            try:
                async with asyncio.timeout(after):
                    return await send(number)
            except TimeoutError:
                return None

        outcomes: list[httpx.Response | None] = []
        for step in range(30):
            # Two at a time, so a cancelled request may also be one waiting for the pool.
            after = typical * (step + 1) / 20
            outcomes += await asyncio.gather(cancelled(2 * step, after), cancelled(2 * step + 1, after))
        assert any(outcome is None for outcome in outcomes), "no request was cancelled"
        answered = [outcome for outcome in outcomes if outcome is not None]
        assert all(response.status_code in (200, 201) for response in answered), [
            (response.status_code, response.text) for response in answered
        ]

        for _ in range(50):
            if checked_out(app.database) == 0:
                break
            await asyncio.sleep(0.1)
        assert checked_out(app.database) == 0, "a cancelled request kept its connection"
        assert await _app_connections(postgres_url, "idle in transaction%") == 0

        async with asyncio.timeout(REQUEST_TIMEOUT):
            me = await app.client.get("/api/v1/users/me", headers=writer.headers)
            posted = await app.client.post("/api/v1/posts", json=post_body("after"), headers=writer.headers)
        assert me.status_code == 200, me.text
        assert posted.status_code == 201, posted.text
    # Every post that got stored, acknowledged or not, has all its tags.
    assert_whole_and_stored({posted.json()["id"]}, await tag_counts(postgres_url))
