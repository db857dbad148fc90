"""The PostgreSQL primary dies under a write load; the app follows its promoted secondary (issue 12, part 5).

The formation is the one `deploy/failover.sh` runs under pg_auto_failover (a monitor on
$BLOGAPI_TEST_FAILOVER_PORT, 5440 by default, nodes on the next two ports, synchronous
replication); the fixture starts a fresh one and destroys it afterwards, so CI needs nothing
but pg_autoctl. Without pg_autoctl the test is skipped, or fails when BLOGAPI_TEST_REQUIRE
includes `failover` (as CI sets it).

The app runs in-process on a multi-host URL (`host=...&host=...&target_session_attrs=read-write`)
and is never restarted.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import REQUIRED, upgrade
from fault_support import Writer, assert_whole_and_stored, create_writers, post_body, running_app, tag_counts
from sqlalchemy import make_url, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from blogapi.db import parse_lsn
from blogapi.posts.models import Post

SCRIPT = Path(__file__).parents[2] / "deploy" / "failover.sh"
MONITOR_PORT = int(os.environ.get("BLOGAPI_TEST_FAILOVER_PORT", "5440"))
NODE_PORTS = (MONITOR_PORT + 1, MONITOR_PORT + 2)
HOSTS = "&".join(f"host=127.0.0.1:{port}" for port in NODE_PORTS)
ADMIN_URL = f"postgresql+asyncpg://postgres@/postgres?{HOSTS}&target_session_attrs=read-write"

POOL_TIMEOUT = 2.0
REQUEST_TIMEOUT = 15.0
WRITERS = 4
BEFORE_KILL = 3.0
AFTER_RECOVERY = 3.0
"""Seconds of load before the primary is killed, and after the first write acknowledged past it."""
TEST_BOUND = 90.0


def _script(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"FAILOVER_PORT": str(MONITOR_PORT)}
    return subprocess.run(
        [str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def formation() -> Iterator[None]:
    """A fresh formation (a primary and its synchronous secondary), destroyed after the module.

    The failover test, last in the module, leaves it without a secondary.
    """
    reason = ""
    if shutil.which("pg_autoctl") is None:
        reason = "pg_autoctl is not installed (Debian: postgresql-15-auto-failover)"
    else:
        _script("destroy", 120)  # what an interrupted run left behind
        started = _script("start", 150)
        if started.returncode != 0:
            reason = (
                f"`deploy/failover.sh start` failed ({started.returncode}):\n{started.stdout}{started.stderr}"
            )
    if reason:
        _script("destroy", 120)
        if "failover" in REQUIRED:
            pytest.fail(f"required pg_auto_failover formation unavailable: {reason}", pytrace=False)
        pytest.skip(f"no pg_auto_failover formation: {reason}")
    try:
        yield
    finally:
        stopped = _script("destroy", 120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


async def _writable_port() -> int:
    """The node the multi-host URL chose: the primary's port."""
    engine = create_async_engine(ADMIN_URL, poolclass=NullPool)
    try:
        async with asyncio.timeout(30), engine.connect() as connection:
            port = await connection.scalar(text("SELECT current_setting('port')::int"))
            in_recovery = await connection.scalar(text("SELECT pg_is_in_recovery()"))
    finally:
        await engine.dispose()
    assert in_recovery is False
    assert isinstance(port, int)
    return port


def _url(database: str) -> str:
    """The database on whichever node is writable: the multi-host URL blogapi is given."""
    return f"postgresql+asyncpg://postgres@/{database}?{HOSTS}&target_session_attrs=read-write"


async def _create_database(database: str) -> str:
    admin = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with asyncio.timeout(30), admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{database}"'))
    finally:
        await admin.dispose()
    await asyncio.to_thread(upgrade, _url(database))
    return _url(database)


async def _stored_titles(url: str) -> Counter[str]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with asyncio.timeout(30), engine.connect() as connection:
            return Counter((await connection.execute(select(Post.title))).scalars())
    finally:
        await engine.dispose()


@dataclass
class Load:
    started: float = field(default_factory=time.monotonic)
    killed_at: float | None = None
    acknowledged: dict[str, int] = field(default_factory=dict)
    """Idempotency-Key -> id of the post answered 201."""
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    """When (seconds since the kill) each 503 was answered."""
    first_after_kill: float | None = None
    """When (seconds since the kill) the first write sent (or sent again) after it was acknowledged."""

    def since_kill(self) -> float:
        assert self.killed_at is not None
        return time.monotonic() - self.killed_at

    def done(self) -> bool:
        return (
            self.first_after_kill is not None and self.since_kill() > self.first_after_kill + AFTER_RECOVERY
        )


async def _write(client: httpx.AsyncClient, writer: Writer, number: int, load: Load) -> None:
    """POST after POST, each with its own Idempotency-Key, sent again (same key) after a 503."""
    for sequence in itertools.count():
        if load.done():
            return
        key = f"failover-{number}-{sequence}"
        while True:
            sent_after_kill = load.killed_at is not None
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    response = await client.post(
                        "/api/v1/posts",
                        json=post_body(key),
                        headers=writer.headers | {"Idempotency-Key": key},
                    )
            except Exception as exc:  # a hang (TimeoutError) or a transport error
                load.failures.append(f"{key} raised {exc.__class__.__name__}: {exc}")
                return
            load.statuses[response.status_code] += 1
            if response.status_code == 201:
                load.acknowledged[key] = response.json()["id"]
                if sent_after_kill and load.first_after_kill is None:
                    load.first_after_kill = load.since_kill()
                break
            if (
                response.status_code == 503
                and "retry-after" in response.headers
                and load.killed_at is not None
            ):
                load.refused.append(load.since_kill())
                await asyncio.sleep(0.1)  # a client that backs off a little, then retries
                continue
            load.failures.append(
                f"{key}: {response.status_code} {dict(response.headers)} {response.text[:300]}"
            )
            return


async def _replayed(secondary_url: str, primary_url: str) -> None:
    """Wait (bounded) until the secondary has replayed what the primary has now."""
    primary = create_async_engine(primary_url, poolclass=NullPool)
    secondary = create_async_engine(secondary_url, poolclass=NullPool)
    try:
        async with primary.connect() as connection:
            target = parse_lsn(await connection.scalar(text("SELECT pg_current_wal_insert_lsn()::text")))
        async with secondary.connect() as connection:
            for _ in range(200):
                replayed = parse_lsn(await connection.scalar(text("SELECT pg_last_wal_replay_lsn()::text")))
                if replayed is not None and target is not None and replayed >= target:
                    return
                await asyncio.sleep(0.05)
    finally:
        await primary.dispose()
        await secondary.dispose()
    raise AssertionError(f"the secondary did not replay {target}")


async def test_no_writable_node_is_a_503_with_retry_after(formation: None) -> None:
    """What the app meets while the formation switches: nodes that take no writes."""
    async with asyncio.timeout(TEST_BOUND):
        url = await _create_database("blogapi_failover_read_only")
        writer = (await create_writers(url, 1))[0]
        primary_port = await _writable_port()
        secondary_port = next(port for port in NODE_PORTS if port != primary_port)
        secondary = make_url(url).set(host="127.0.0.1", port=secondary_port, query={})
        await _replayed(secondary.render_as_string(), url)
        # Only the secondary listed: asyncpg finds no host that is read-write.
        no_writable = secondary.update_query_dict({"target_session_attrs": "read-write"})
        # The secondary as a single host: the app connects, and a write is refused (25006),
        # as on a primary that has just been demoted.
        for database_url in (no_writable.render_as_string(), secondary.render_as_string()):
            async with running_app(
                database_url, pool_size=2, max_overflow=0, pool_timeout=POOL_TIMEOUT
            ) as app:
                response = await app.client.post(
                    "/api/v1/posts",
                    json=post_body("read-only"),
                    headers=writer.headers | {"Idempotency-Key": "read-only"},
                )
            assert response.status_code == 503, (database_url, response.text)
            assert response.headers["retry-after"] == "1"
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["type"] == "https://blogapi.dev/problems/service-unavailable"
        assert await _stored_titles(url) == Counter()


async def test_the_app_follows_the_promoted_secondary_and_loses_no_acknowledged_write(
    formation: None,
) -> None:
    async with asyncio.timeout(TEST_BOUND):
        url = await _create_database("blogapi_failover")
        old_primary = await _writable_port()
        writers = await create_writers(url, WRITERS)
        load = Load()
        async with running_app(url, pool_size=4, max_overflow=2, pool_timeout=POOL_TIMEOUT) as app:

            async def kill() -> None:
                await asyncio.sleep(BEFORE_KILL)
                stopped = await asyncio.to_thread(_script, "stop-primary", 30)
                load.killed_at = time.monotonic()
                assert stopped.returncode == 0, stopped.stdout + stopped.stderr

            await asyncio.gather(
                kill(), *(_write(app.client, writer, number, load) for number, writer in enumerate(writers))
            )
            acknowledged = len(load.acknowledged)
            new_primary = await _writable_port()

        assert not load.failures, (load.failures[:5], dict(load.statuses))
        assert new_primary != old_primary, "the secondary was not promoted"
        assert load.refused, f"no write met the failover (statuses {dict(load.statuses)})"
        assert load.first_after_kill is not None
        stored = await _stored_titles(url)
        # Every acknowledged write is there once; a write retried with its key was not made twice.
        assert {f"post {key}": 1 for key in load.acknowledged} == stored
        assert_whole_and_stored(load.acknowledged.values(), await tag_counts(url))
        print(
            f"\nfailover: primary 127.0.0.1:{old_primary} killed, 127.0.0.1:{new_primary} promoted;"
            f" {acknowledged} writes acknowledged and all stored; {len(load.refused)} answers 503"
            f" (the last {max(load.refused):.1f} s after the kill); the first write sent after the kill"
            f" was acknowledged {load.first_after_kill:.1f} s after it"
        )
