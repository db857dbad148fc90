"""The data layer's guarantees, checked on each backend's real connections."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from blogapi.config import Settings
from blogapi.db import READ_ONLY, Database, UTCDateTime, create_engine, normalize_url
from blogapi.errors import is_retryable_disconnect
from blogapi.posts.models import Post
from blogapi.users.models import User


@pytest.mark.backends("sqlite")
async def test_every_pooled_sqlite_connection_has_wal_a_busy_timeout_and_foreign_keys(
    database: Database,
) -> None:
    # Read-only connections begin deferred, so three can be open at once.
    readers = database.engine.execution_options(**{READ_ONLY: True})
    connections = [await readers.connect() for _ in range(3)]
    try:
        for connection in connections:
            assert (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar_one() >= 1000
            assert (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    finally:
        for connection in connections:
            await connection.close()


async def test_a_post_for_a_missing_author_is_refused_by_the_database(database: Database) -> None:
    now = datetime.now(UTC)
    with pytest.raises(IntegrityError):
        async with database.sessionmaker.begin() as session:
            session.add(Post(author_id=999_999, title="orphan", body="", created_at=now, updated_at=now))


async def test_deleting_a_user_row_cascades_to_their_posts_in_the_database(database: Database) -> None:
    now = datetime.now(UTC)
    async with database.sessionmaker.begin() as session:
        user = User(name="A", email="cascade@example.com", password_hash="x", is_admin=False)
        session.add(user)
        await session.flush()
        session.add_all([Post(author_id=user.id, title=f"p{i}", body="") for i in range(3)])
        user_id = user.id
    async with database.sessionmaker.begin() as session:
        await session.execute(
            text(
                'DELETE FROM "user" WHERE id = :id'
                if database.engine.dialect.name != "mysql"
                else "DELETE FROM `user` WHERE id = :id"
            ),
            {"id": user_id},
        )
    async with database.sessionmaker() as session:
        assert (await session.scalars(select(Post).where(Post.author_id == user_id))).all() == []
    del now


async def test_datetimes_come_back_aware_utc_with_microseconds_on_every_backend(database: Database) -> None:
    written = datetime(2030, 1, 1, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    async with database.sessionmaker.begin() as session:
        user = User(name="T", email="tz@example.com", password_hash="x", is_admin=False, created_at=written)
        session.add(user)
        await session.flush()
        user_id = user.id
    async with database.sessionmaker() as session:
        stored = await session.scalar(select(User.created_at).where(User.id == user_id))
    assert stored == written
    assert stored is not None
    assert stored.utcoffset() == timedelta(0)
    assert stored.microsecond == 123456


async def test_a_naive_datetime_is_refused_rather_than_guessed(database: Database) -> None:
    with pytest.raises(Exception, match="naive"):
        async with database.sessionmaker.begin() as session:
            session.add(
                User(name="N", email="naive@example.com", password_hash="x", created_at=datetime(2030, 1, 1))
            )


def test_utc_datetime_attaches_utc_to_naive_values_read_back() -> None:
    value = UTCDateTime().process_result_value(datetime(2030, 1, 1), dialect=sqlite.dialect())
    assert value == datetime(2030, 1, 1, tzinfo=UTC)


def test_mariadb_urls_get_utf8mb4_unless_a_charset_is_given() -> None:
    assert normalize_url("mysql+aiomysql://root@h/db").query["charset"] == "utf8mb4"
    assert normalize_url("mysql+aiomysql://root@h/db?charset=latin1").query["charset"] == "latin1"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("mysql://u@h/db", "mysql+aiomysql://u@h/db"),
        ("sqlite:////srv/blogapi/x.db", "sqlite+aiosqlite:////srv/blogapi/x.db"),
    ],
)
def test_plain_database_urls_are_given_the_async_driver(given: str, expected: str) -> None:
    assert Settings(database_url=given, _env_file=None).database_url == expected


async def test_twenty_concurrent_write_transactions_on_one_database_all_commit(database: Database) -> None:
    async def write(number: int) -> None:
        async with database.sessionmaker.begin() as session:
            session.add(User(name=f"W{number}", email=f"w{number}@example.com", password_hash="x"))

    await asyncio.gather(*(write(number) for number in range(20)))
    async with database.sessionmaker() as session:
        emails = (await session.scalars(select(User.email).where(User.email.like("w%@example.com")))).all()
    assert len(emails) == 20


def test_a_connection_lost_during_a_statement_may_rerun_the_request_but_one_lost_at_commit_may_not() -> None:
    lost = ConnectionResetError("connection is closed")
    during_statement = DBAPIError("SELECT 1", {}, lost, connection_invalidated=True)
    during_commit = DBAPIError(None, None, lost, connection_invalidated=True)
    not_a_disconnect = DBAPIError("SELECT 1", {}, ValueError("bad value"))
    assert is_retryable_disconnect(during_statement, "POST")
    assert not is_retryable_disconnect(during_commit, "POST")
    assert not is_retryable_disconnect(not_a_disconnect, "POST")


def test_a_read_reruns_whatever_step_lost_its_connection_as_it_stores_nothing() -> None:
    lost = ConnectionResetError("connection is closed")
    during_rollback = DBAPIError(None, None, lost, connection_invalidated=True)
    not_a_disconnect = DBAPIError("SELECT 1", {}, ValueError("bad value"))
    assert is_retryable_disconnect(during_rollback, "GET")
    assert is_retryable_disconnect(during_rollback, "HEAD")
    assert not is_retryable_disconnect(during_rollback, "DELETE")
    assert not is_retryable_disconnect(not_a_disconnect, "GET")


# --- the pool: fair to waiting checkouts ------------------------------------------------------


def _small_pool(settings: Settings, size: int) -> AsyncEngine:
    return create_engine(
        settings.model_copy(update={"pool_size": size, "max_overflow": 0, "pool_timeout": 2})
    )


async def _warm(engine: AsyncEngine, size: int) -> None:
    """Open every connection of the pool, so that checkouts afterwards only ever wait."""
    connections = [await engine.connect() for _ in range(size)]
    for connection in connections:
        await connection.close()


@pytest.mark.backends("postgresql", "mariadb")
async def test_checkouts_that_wait_for_a_connection_get_one_in_the_order_they_asked(
    settings: Settings,
) -> None:
    engine = _small_pool(settings, 2)
    await _warm(engine, 2)
    tickets = itertools.count()
    served: list[int] = []

    async def client() -> None:
        for _ in range(10):
            ticket = next(tickets)
            async with engine.connect() as connection:
                served.append(ticket)
                await connection.execute(text("SELECT 1"))

    try:
        await asyncio.gather(*(client() for _ in range(12)))
    finally:
        await engine.dispose()
    # SQLAlchemy's own asyncio queue lets a newcomer take a connection that was on its way
    # to a waiter, which then queues again at the back: tickets come out of order.
    assert len(served) == 120
    assert served == sorted(served)


@pytest.mark.backends("postgresql", "mariadb")
@pytest.mark.parametrize("when", ["while waiting", "as the connection is handed over"])
async def test_a_checkout_cancelled_while_it_waits_leaks_no_connection(settings: Settings, when: str) -> None:
    engine = _small_pool(settings, 1)
    try:
        holder = await engine.connect()
        waiter = asyncio.create_task(engine.connect().start())
        await asyncio.sleep(0.05)  # the waiter is queued
        if when == "while waiting":
            waiter.cancel()
            await asyncio.sleep(0)
            await holder.close()
        else:
            await holder.close()  # hands the connection to the waiter, which has not run yet
            waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        async with engine.connect() as connection:  # within pool_timeout: nothing leaked
            assert await connection.scalar(text("SELECT 1")) == 1
    finally:
        await engine.dispose()
