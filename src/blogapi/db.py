"""The data layer's one place: declarative base, UTC datetime type, engine and session policy.

Everything that decides how blogapi talks to a database (drivers, pool, SQLite pragmas,
transaction boundaries) lives here, so that PgBouncer, read replicas or another pool
policy are a change to this module alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import unicodedata
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import Context, ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias
from uuid import uuid4

from fastapi import Depends, Request
from sqlalchemy import (
    Boolean,
    ColumnElement,
    DateTime,
    Dialect,
    Executable,
    MetaData,
    Row,
    Select,
    SQLColumnExpression,
    String,
    and_,
    event,
    make_url,
    or_,
    text,
    tuple_,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL, Connection
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, NullPool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.schema import ColumnCollectionConstraint
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlalchemy.util import await_
from sqlalchemy.util.queue import Empty, Full, QueueCommon
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blogapi.config import DatabasePooler, Settings

logger = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Integer primary keys are 32-bit on every backend; ids outside this range are never looked up.
MAX_ID = 2**31 - 1

AnyRow: TypeAlias = Row[*tuple[Any, ...]]
AnySelect: TypeAlias = Select[*tuple[Any, ...]]

READ_ONLY = "blogapi_read_only"
"""Execution option marking a connection as serving a read-only request."""

TRANSACTION_POOLED = "blogapi_transaction_pooled"
"""Execution option of an engine whose connections reach PostgreSQL through PgBouncer's
transaction pooling: each transaction may run on a different server connection."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


def created_at_or_now(context: DefaultExecutionContext) -> datetime:
    """Default for `updated_at`: a new row was last updated when it was created.

    Column defaults run in column order, so `created_at` (declared first) is already set.
    """
    created_at = context.get_current_parameters().get("created_at")  # type: ignore[no-untyped-call]
    return created_at if isinstance(created_at, datetime) else utcnow()


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend, with microseconds.

    PostgreSQL stores `timestamptz`; SQLite and MariaDB have no time zone in their
    column types, so they store naive UTC and the zone is attached again on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware datetime")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def binary_string(length: int) -> TypeEngine[str]:
    """A VARCHAR compared byte for byte on every backend.

    MariaDB's default collation folds case and accents ('José' = 'jose'), which neither
    PostgreSQL nor SQLite does.
    """
    return String(length).with_variant(mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb")


def normalize_url(database_url: str | URL) -> URL:
    url = make_url(database_url)
    if url.get_backend_name() in ("mysql", "mariadb") and "charset" not in url.query:
        # The server default may be utf8mb3, which cannot store emoji.
        url = url.update_query_dict({"charset": "utf8mb4"})
    return url


class FairQueue(QueueCommon[ConnectionPoolEntry]):
    """The pool's idle connections, handed to waiting checkouts in arrival order.

    SQLAlchemy's asyncio queue lets a checkout that arrives just as a connection comes
    back take it ahead of the checkouts already waiting, which go to the back of the line.
    When requests outnumber connections that makes a few of them wait many turns: it was
    the long tail of POST /posts at 32 clients on a pool of 15. Here a returned
    connection goes straight to the longest waiter, and a checkout takes an idle one only
    when nobody is waiting (with waiters, there is none idle).
    """

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        self.maxsize = maxsize
        self.use_lifo = use_lifo
        self._idle: deque[ConnectionPoolEntry] = deque()
        self._waiters: deque[asyncio.Future[ConnectionPoolEntry]] = deque()

    def empty(self) -> bool:
        return not self._idle

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._idle)

    def qsize(self) -> int:
        return len(self._idle)

    def waiting(self) -> int:
        """Checkouts waiting for a connection (the metrics' `blogapi_db_pool_waiting`)."""
        return sum(not waiter.done() for waiter in self._waiters)

    def put_nowait(self, item: ConnectionPoolEntry) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # else it timed out or was cancelled
                waiter.set_result(item)
                return
        if self.full():
            raise Full
        self._idle.append(item)

    def put(self, item: ConnectionPoolEntry, block: bool = True, timeout: float | None = None) -> None:
        self.put_nowait(item)  # the pool never waits to give a connection back

    def get_nowait(self) -> ConnectionPoolEntry:
        if not self._idle:
            raise Empty
        return self._idle.pop() if self.use_lifo else self._idle.popleft()

    def get(self, block: bool = True, timeout: float | None = None) -> ConnectionPoolEntry:
        if self._idle or not block:
            return self.get_nowait()
        return await_(self._wait(seconds=timeout))  # in the pool's greenlet, as SQLAlchemy's queue

    async def _wait(self, *, seconds: float | None) -> ConnectionPoolEntry:
        waiter: asyncio.Future[ConnectionPoolEntry] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(seconds):
                return await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return waiter.result()  # handed over as the time ran out
            raise Empty from None
        except BaseException:
            # Cancelled (a client went away): a connection handed over meanwhile goes on
            # to the next waiter, or back to the idle ones, instead of leaking.
            if waiter.done() and not waiter.cancelled():
                self.put_nowait(waiter.result())
            raise
        finally:
            waiter.cancel()  # a no-op once done; else put_nowait skips it


class FairQueuePool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio pool, with waiting checkouts served first come, first served."""

    _queue_class = FairQueue


def create_engine(settings: Settings, *, pooled: bool = True) -> AsyncEngine:
    """The engine for `settings`; `pooled=False` opens a connection per use (migrations, scripts)."""
    url = normalize_url(settings.database_url)
    backend = url.get_backend_name()
    # No pool_pre_ping: it costs a round trip per request (with asyncpg: BEGIN, a query,
    # ROLLBACK). A pooled connection found dead by its request's statement fails that
    # attempt, the pool drops every connection as old, and the request runs again
    # (errors.is_retryable_disconnect).
    options: dict[str, Any] = {}
    if backend == "sqlite":
        options["connect_args"] = {"timeout": 10}
        if url.database and Path(url.database).is_relative_to(settings.data_dir):
            # SQLite creates its file but not the folder: on a fresh install, data_dir.
            Path(url.database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not pooled:
        options["poolclass"] = NullPool
    elif backend != "sqlite":  # SQLite keeps SQLAlchemy's choice (a static pool for :memory:)
        options |= {
            "poolclass": FairQueuePool,
            "pool_size": settings.pool_size,
            "max_overflow": settings.max_overflow,
            "pool_timeout": settings.pool_timeout,
            "pool_recycle": settings.pool_recycle,
        }
    # The app's statements have a time limit, set once per connection (no round trip per
    # request); migrations and scripts (`pooled=False`) have none.
    timeout_ms = settings.statement_timeout_ms if pooled else 0
    transaction_pooled = backend == "postgresql" and settings.database_pooler is DatabasePooler.PGBOUNCER
    if backend == "postgresql":
        # application_name is one of the few startup parameters PgBouncer passes on;
        # it refuses the others (jit, statement_timeout), which are then set per transaction.
        server_settings = {"application_name": "blogapi"}
        if pooled and not transaction_pooled:
            # The app's statements (not a migration's, which may run through PgBouncer
            # too and compiles nothing worth skipping) without JIT. A statement reads a
            # page, and compiling it costs more than it runs. A
            # prepared statement's generic plan (after five runs) does not know how far a
            # search's walk may read, estimates it far above jit_above_cost, and spent 28 ms
            # of a 39 ms page compiling (measured at 200,000 posts, PostgreSQL 15).
            server_settings["jit"] = "off"
        if timeout_ms and not transaction_pooled:
            server_settings["statement_timeout"] = str(timeout_ms)
        options["connect_args"] = {"server_settings": server_settings}
        if transaction_pooled:
            options["connect_args"] |= transaction_pooler_connect_args()
            options["execution_options"] = {TRANSACTION_POOLED: True}
    elif backend in ("mysql", "mariadb"):
        # REPEATABLE READ's gap locks turn concurrent inserts on a unique index into
        # deadlocks; READ COMMITTED is what PostgreSQL does by default.
        options["isolation_level"] = "READ COMMITTED"
        if timeout_ms:
            # MariaDB limits SELECTs only (reads, and the reads of a write transaction).
            options["connect_args"] = {
                "init_command": f"SET SESSION max_statement_time = {timeout_ms / 1000}"
            }
    engine = create_async_engine(url, **options)
    if transaction_pooled:
        _limit_transactions(engine, timeout_ms)
    if backend == "sqlite":
        _configure_sqlite(engine)
        if timeout_ms:
            _limit_sqlite_statements(engine, timeout_ms / 1000)
    return engine


def transaction_pooler_connect_args() -> dict[str, Any]:
    """asyncpg's options for PgBouncer in transaction mode (1.18: no prepared statements).

    A statement prepared in one transaction may be gone, or be another client's, in the
    next: both caches are off (asyncpg's own, which its type introspection uses, and
    SQLAlchemy's), and each statement SQLAlchemy prepares gets a name no other client
    uses, where asyncpg would number them from 1 on every connection.
    """
    return {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": _unique_statement_name,
    }


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid4().hex}__"


def _limit_transactions(engine: AsyncEngine, timeout_ms: int) -> None:
    """`SET LOCAL jit = off` and `SET LOCAL statement_timeout` (if any) as each transaction begins.

    Through a transaction pooler the server connection is another client's after COMMIT,
    so a session setting would leak to it (and PgBouncer refuses statement_timeout as a
    startup parameter): the limit lasts one transaction. It is sent on the DBAPI cursor,
    not through SQLAlchemy, so statement counters and logs see only the app's statements.
    """

    # One statement, one round trip: set_config(..., true) is SET LOCAL.
    limit = f", set_config('statement_timeout', '{int(timeout_ms)}', true)" if timeout_ms else ""
    statement = f"SELECT set_config('jit', 'off', true){limit}"

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Connection) -> None:
        cursor = connection.connection.cursor()
        try:
            cursor.execute(statement)
        except Exception as error:
            # As for the app's own statements: a lost connection is invalidated and raised
            # as a DBAPIError with its statement, so the request runs again (a PgBouncer
            # restart closes every client connection), not as the driver's bare error.
            connection._handle_dbapi_exception(error, statement, None, cursor, None)
        finally:
            cursor.close()


def _limit_sqlite_statements(engine: AsyncEngine, seconds: float) -> None:
    """Interrupt a statement that runs past `seconds` ("interrupted"): SQLite has no setting
    for it, but calls a progress handler every few thousand steps of a statement."""

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        deadline = [math.inf]  # set by on_execute as a statement starts
        record.info[_DEADLINE] = deadline

        def past_deadline() -> bool:  # runs in aiosqlite's thread, during the statement
            return time.monotonic() > deadline[0]

        await_(dbapi_connection.driver_connection.set_progress_handler(past_deadline, _SQLITE_STEPS))

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def on_execute(connection: Connection, *_args: Any) -> None:
        connection.info[_DEADLINE][0] = time.monotonic() + seconds


_DEADLINE = "blogapi_statement_deadline"
_SQLITE_STEPS = 10_000
"""Virtual machine steps between two looks at the clock: well under a millisecond."""


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, a busy timeout and foreign keys on every connection; BEGIN IMMEDIATE for writes.

    A deferred transaction that reads and then writes gets SQLITE_BUSY at once, without
    waiting for the busy timeout, when another writer committed in between: so a write
    transaction takes the write lock when it begins, and readers stay deferred.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA busy_timeout=10000",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA foreign_keys=ON",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def create_database_statement(url: URL) -> str:
    """The SQL that creates the database `url` names, as blogapi wants it (MariaDB: utf8mb4)."""
    name = url.database or ""
    if url.get_backend_name() == "postgresql":
        statement = 'CREATE DATABASE "{}"'.format(name.replace('"', '""'))
        # Owned by the URL's user, who can then create the tables (PostgreSQL 15+ no longer
        # lets every user create them in `public`).
        return statement + (' OWNER "{}"'.format(url.username.replace('"', '""')) if url.username else "")
    quoted = name.replace("`", "``")
    return f"CREATE DATABASE IF NOT EXISTS `{quoted}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"


async def create_database(database_url: str | URL, *, pooler: DatabasePooler = DatabasePooler.NONE) -> bool:
    """Create the PostgreSQL or MariaDB database the URL names unless it exists; True if created.

    Connects to the server's `postgres` database (MariaDB: to no database), so the URL's user
    needs the right to create databases.
    """
    url = normalize_url(database_url)
    if url.get_backend_name() == "postgresql":
        pooled = pooler is DatabasePooler.PGBOUNCER
        admin = create_async_engine(
            url.set(database="postgres"),
            isolation_level="AUTOCOMMIT",
            poolclass=NullPool,
            connect_args=transaction_pooler_connect_args() if pooled else {},
        )
        try:
            async with admin.connect() as connection:
                exists = await connection.scalar(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
                )
                if exists:
                    return False
                await connection.execute(text(create_database_statement(url)))
                return True
        finally:
            await admin.dispose()
    admin = create_async_engine(url.set(database=""), poolclass=NullPool)
    try:
        async with admin.connect() as connection:
            result = await connection.execute(text(create_database_statement(url)))
            return bool(result.rowcount)
    finally:
        await admin.dispose()


@dataclass(frozen=True, slots=True)
class Database:
    """An engine and the session factories requests use; owned by the app's lifespan."""

    engine: AsyncEngine
    read_engine: ReadEngine
    """Where read-only requests read: on PostgreSQL in autocommit, and with READ_DATABASE_URL
    on a streaming replica (`ReadEngine`).

    A GET endpoint opens its connection itself (`async with database.read_engine.connect()`)
    and runs Core statements on it: no session, no identity map, and no yield dependency,
    which FastAPI wraps in an exit stack and a shielded cancel scope (together about a
    fifth of a simple GET's CPU, measured with bench/layers.py).
    """
    sessionmaker: async_sessionmaker[AsyncSession]
    read_sessionmaker: async_sessionmaker[AsyncSession]

    @classmethod
    def from_engine(
        cls,
        engine: AsyncEngine,
        replicas: list[AsyncEngine] | None = None,
        *,
        max_lag_seconds: float = 5.0,
        wait_seconds: float = 0.1,
    ) -> Database:
        primary_reads = engine.execution_options(**read_options(engine))
        if replicas:
            # Only a write's commit needs to be known (the response's X-Commit-LSN).
            event.listen(engine.sync_engine, "commit", _note_commit)
        read_engine = ReadEngine(
            primary_reads,
            [replica.execution_options(**read_options(replica)) for replica in replicas or ()],
            max_lag_seconds=max_lag_seconds,
            wait_seconds=wait_seconds,
        )
        return cls(
            engine=engine,
            read_engine=read_engine,
            sessionmaker=async_sessionmaker(engine, expire_on_commit=False),
            read_sessionmaker=async_sessionmaker(primary_reads, expire_on_commit=False),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        replicas = [
            create_engine(settings.model_copy(update={"database_url": url}))
            for url in settings.read_database_url
        ]
        return cls.from_engine(
            create_engine(settings),
            replicas,
            max_lag_seconds=settings.read_max_lag_seconds,
            wait_seconds=settings.read_your_writes_wait_ms / 1000,
        )

    async def dispose(self) -> None:
        await self.read_engine.dispose_replicas()
        await self.engine.dispose()


def read_options(engine: AsyncEngine) -> dict[str, Any]:
    """The execution options of a read-only request's connection to `engine`."""
    options: dict[str, Any] = {READ_ONLY: True}
    if engine.dialect.name == "postgresql" and not engine.get_execution_options().get(TRANSACTION_POOLED):
        # (Not through PgBouncer: asyncpg prepares a statement, then executes it, and
        # between the two an autocommit client holds no server connection.)
        # Under READ COMMITTED every statement sees its own snapshot anyway, so a read
        # gains nothing from BEGIN ... COMMIT but two round trips. asyncpg switches to
        # autocommit on the client side, without a round trip of its own.
        options["isolation_level"] = "AUTOCOMMIT"
    return options


# Read routing (READ_DATABASE_URL, docs/scaling.md "Read replicas").

COMMIT_LSN_HEADER = "X-Commit-LSN"
"""A write's response carries the primary's WAL position after its commit; a read that sends
it back is answered from a replica that has replayed that far, or from the primary."""

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(value: str) -> int | None:
    """A PostgreSQL WAL position (`16/B374D848`) as a number; None unless well-formed."""
    match = _LSN.fullmatch(value)
    if match is None:
        return None
    return int(match[1], 16) << 32 | int(match[2], 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(slots=True)
class ReadRoute:
    """How one request reads, set by `ReadYourWrites` for the request's task."""

    on_primary: bool
    """A writing request: its reads, even on another connection, see what it wrote."""
    after_lsn: int | None = None
    """The WAL position the client has seen (its `X-Commit-LSN`)."""
    committed: bool = False


_read_route: ContextVar[ReadRoute | None] = ContextVar("blogapi_read_route", default=None)


def _note_commit(connection: Connection) -> None:
    route = _read_route.get()  # SQLAlchemy's greenlets run in the request's context
    if route is not None:
        route.committed = True


ReplicaState: TypeAlias = Literal["unknown", "streaming", "lagging", "down"]


@dataclass(slots=True)
class Replica:
    engine: AsyncEngine
    state: ReplicaState = "unknown"
    lag_seconds: float | None = None
    replayed_lsn: int = 0

    @property
    def address(self) -> str:
        """Host, port and database: never the URL's user or password."""
        url = self.engine.url
        return f"{url.host}:{url.port or 5432}/{url.database}"


_PRIMARY_POSITION = text("SELECT pg_current_wal_insert_lsn()::text")
_REPLICA_STATUS = text("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text")
_REPLAYED = text("SELECT pg_last_wal_replay_lsn()::text")
_CHECK_SECONDS = 1.0
"""How often replicas are checked: requests never query a replica's state themselves."""
_POLL_SECONDS = 0.01


class ReadEngine:
    """The engine reads connect to: the primary's, or with replicas a healthy replica's.

    A writing request reads on the primary. A read that presents an `X-Commit-LSN` goes
    to a replica known to have replayed that far; else it polls the replica (one query
    per `_POLL_SECONDS`) for at most `wait_seconds`, then reads on the primary. Replicas
    are checked once a second by a background task, never per request: one that is down,
    is no longer in recovery, or lags more than `max_lag_seconds` is skipped until it
    catches up.
    """

    def __init__(
        self,
        primary: AsyncEngine,
        replicas: list[AsyncEngine],
        *,
        max_lag_seconds: float = 5.0,
        wait_seconds: float = 0.1,
    ) -> None:
        self.primary = primary
        self.replicas = [Replica(replica) for replica in replicas]
        self.max_lag_seconds = max_lag_seconds
        self.wait_seconds = wait_seconds
        self._next = 0
        self._monitor: asyncio.Task[None] | None = None
        self._positions: deque[tuple[float, int]] = deque()
        """The primary's WAL position at each check (monotonic time, LSN), for the lag."""

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        if not self.replicas:
            return self.primary.connect()
        return self._routed()

    @asynccontextmanager
    async def _routed(self) -> AsyncIterator[AsyncConnection]:
        self.watch()
        connection, replica = await self._choose()
        try:
            yield connection
        except DBAPIError as error:
            if replica is not None and error.connection_invalidated:
                # Lost: the retry (errors.is_retryable_disconnect) reads on the primary.
                replica.state = "down"
            raise
        finally:
            await connection.close()

    async def _choose(self) -> tuple[AsyncConnection, Replica | None]:
        route = _read_route.get()
        if route is None or not route.on_primary:
            after = None if route is None else route.after_lsn
            for replica in self._healthy():
                try:
                    # A replica host that went silent (no refusal) would hold the read for the
                    # driver's connect timeout (60 s): the monitor gives up after a second too.
                    async with asyncio.timeout(_CHECK_SECONDS):
                        connection = await _started(replica.engine.connect())
                except (DBAPIError, OSError, TimeoutError) as error:
                    logger.warning(
                        "replica %s unreachable, reading on the primary: %s", replica.address, error
                    )
                    replica.state = "down"
                    continue
                if (
                    after is None
                    or replica.replayed_lsn >= after
                    or await self._caught_up(connection, replica, after)
                ):
                    return connection, replica
                await connection.close()
                break  # it waited once; the primary has the write for sure
        return await _started(self.primary.connect()), None

    def _healthy(self) -> list[Replica]:
        healthy = [replica for replica in self.replicas if replica.state == "streaming"]
        if len(healthy) > 1:  # round robin
            self._next = (self._next + 1) % len(healthy)
            healthy = healthy[self._next :] + healthy[: self._next]
        return healthy

    async def _caught_up(self, connection: AsyncConnection, replica: Replica, lsn: int) -> bool:
        """Whether the replica replays `lsn` within `wait_seconds`, asking it every `_POLL_SECONDS`."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            replayed = parse_lsn(await connection.scalar(_REPLAYED) or "")
            if replayed is not None:
                replica.replayed_lsn = max(replica.replayed_lsn, replayed)
                if replayed >= lsn:
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(_POLL_SECONDS, remaining))

    async def commit_position(self) -> int | None:
        """The primary's WAL position now: at or past every commit that has returned."""
        async with self.primary.connect() as connection:
            return parse_lsn(await connection.scalar(_PRIMARY_POSITION) or "")

    def watch(self) -> None:
        """Start checking the replicas (in this event loop), unless already doing so."""
        monitor = self._monitor
        if monitor is not None and not monitor.done() and monitor.get_loop() is asyncio.get_running_loop():
            return
        # A context of its own, not the request's that may start it (its id in the logs).
        self._monitor = asyncio.get_running_loop().create_task(
            self._watch(), name="blogapi-replica-monitor", context=Context()
        )

    async def _watch(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                logger.exception("checking the replicas failed; trying again in a second")
            await asyncio.sleep(_CHECK_SECONDS)

    async def check(self) -> None:
        """Look at every replica once: its state, lag and replayed position."""
        try:
            async with asyncio.timeout(_CHECK_SECONDS):
                primary_lsn = await self.commit_position()
        except Exception:  # the primary's own failures are the requests' to report
            primary_lsn = None
        now = time.monotonic()
        if primary_lsn is not None:
            self._positions.append((now, primary_lsn))
        while len(self._positions) > 1 and self._positions[1][0] < now - 2 * self.max_lag_seconds:
            self._positions.popleft()
        await asyncio.gather(*(self._check(replica, now) for replica in self.replicas))

    def _lag(self, replayed: int, now: float) -> float:
        """How long ago the primary had written WAL the replica has not replayed yet: its
        view is at most this old (to a check's second). 0 when it has replayed all there was."""
        for seen, lsn in self._positions:
            if lsn > replayed:
                return now - seen
        return 0.0

    async def _check(self, replica: Replica, now: float) -> None:
        try:
            async with asyncio.timeout(_CHECK_SECONDS), replica.engine.connect() as connection:
                in_recovery, replayed_text = (await connection.execute(_REPLICA_STATUS)).one()
        except Exception as error:
            if replica.state != "down":
                logger.warning("replica %s is down, reading on the primary: %s", replica.address, error)
            replica.state, replica.lag_seconds = "down", None
            return
        replayed = parse_lsn(replayed_text or "")
        if not in_recovery or replayed is None:
            if replica.state != "down":
                logger.warning("%s is not a streaming replica, reading on the primary", replica.address)
            replica.state, replica.lag_seconds = "down", None
            return
        replica.replayed_lsn = max(replica.replayed_lsn, replayed)
        lag = self._lag(replayed, now)
        state: ReplicaState = "streaming" if lag <= self.max_lag_seconds else "lagging"
        if state != replica.state and state == "lagging":
            logger.warning("replica %s lags %.1f s, reading on the primary", replica.address, lag)
        replica.state, replica.lag_seconds = state, round(lag, 3)

    async def dispose_replicas(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(BaseException):
                await self._monitor
            self._monitor = None
        for replica in self.replicas:
            await replica.engine.dispose()


async def _started(connection: AsyncConnection) -> AsyncConnection:
    await connection.start()
    return connection


class ReadYourWrites:
    """ASGI middleware of an app with replicas: routes each request's reads (`ReadRoute`),
    and gives a response whose request committed the primary's position (`X-Commit-LSN`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reading = scope["method"] in ("GET", "HEAD")
        route = ReadRoute(on_primary=not reading)
        if reading:
            for name, value in scope["headers"]:
                if name == b"x-commit-lsn":
                    # Malformed: ignored, the read sees a replica's view (README).
                    route.after_lsn = parse_lsn(value.decode("latin-1"))
                    break
        read_engine = scope["app"].state.database.read_engine

        async def send_position(message: Message) -> None:
            if message["type"] == "http.response.start" and route.committed:
                route.committed = False  # once, whatever the retries
                try:
                    lsn = await read_engine.commit_position()
                except Exception as error:
                    logger.warning("no X-Commit-LSN: the primary's position is unknown: %s", error)
                    lsn = None
                if lsn is not None:
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"x-commit-lsn", format_lsn(lsn).encode()),
                    ]
            await send(message)

        token = _read_route.set(route)
        try:
            await self.app(scope, receive, send_position)
        finally:
            _read_route.reset(token)


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def _database_dependency(request: Request) -> Database:
    # async: a sync dependency would cost a thread-pool hop on every request.
    return get_database(request)


DatabaseDep = Annotated[Database, Depends(_database_dependency)]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A writing request's session and transaction, committed when the endpoint returns.

    The session checks a connection out at its first statement, not before: work done
    earlier (validation, password hashing) holds no pooled connection.
    """
    async with get_database(request).sessionmaker() as session, session.begin():
        yield session


# scope="function": the commit finishes before the response is sent, so a failed commit
# becomes an error response instead of a 2xx for data that was never stored.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def insert_missing(connection: AsyncConnection, entity: type[Base], rows: list[dict[str, Any]]) -> None:
    """Insert rows, leaving alone those whose unique key already exists (committed or not).

    Two requests may create the same row at once: the database keeps the first.
    """
    if rows:
        await connection.execute(_insert_missing(connection.dialect.name, entity, next(iter(rows[0]))), rows)


@cache
def _insert_missing(dialect: str, entity: type[Base], first_column: str) -> Executable:
    # Built once per entity: the values are bound at execution, one parameter set per row.
    if dialect == "postgresql":
        return postgresql.insert(entity).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(entity).on_conflict_do_nothing()
    statement = mysql.insert(entity)  # a no-op update: MariaDB has no DO NOTHING
    return statement.on_duplicate_key_update({first_column: statement.inserted[first_column]})


LIKE_ESCAPE = "/"
"""The ESCAPE character of LIKE patterns whose value is bound at execution (see escape_like)."""


def escape_like(value: str) -> str:
    """`value` for a LIKE pattern with ESCAPE `LIKE_ESCAPE`: `%` and `_` match themselves.

    What SQLAlchemy's `autoescape=True` does for a literal, for a value bound at execution.
    """
    for special in (LIKE_ESCAPE, "%", "_"):
        value = value.replace(special, LIKE_ESCAPE + special)
    return value


def fold_for_search(text: str) -> str:
    """The one form in which names and titles are searched, the same on every backend.

    Case-insensitive by Unicode's full case folding ('ÉCOLE' finds 'école', 'STRASSE' finds
    'straße'), accent-sensitive ('ecole' does not find 'école'), and blind to how a character
    was composed (NFD 'é' is NFC 'é'). The database only compares bytes: its own `lower()`
    is ASCII-only on SQLite, locale-bound on PostgreSQL, and MariaDB's collations ignore
    accents, so the folding is done here, once, when a row is written and when a query is read.
    """
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).casefold())


FOLD_GROWTH = 3
"""Case folding makes a string at most this many times longer ('ΐ' is three code points)."""


def folded_copy_of(column: str) -> Callable[[DefaultExecutionContext], str]:
    """A column default: `fold_for_search` of the row's `column`, for Core inserts too."""

    def default(context: DefaultExecutionContext) -> str:
        parameters: dict[str, Any] = context.get_current_parameters()  # type: ignore[no-untyped-call]
        return fold_for_search(parameters[column])

    return default


def violates(error: IntegrityError, constraint_name: str) -> bool:
    """Whether an IntegrityError was raised by the named constraint, on any backend.

    PostgreSQL and MariaDB name the constraint; SQLite names its columns instead
    ("UNIQUE constraint failed: user.email").
    """
    message = str(error.orig)
    if constraint_name in message:
        return True
    for table in Base.metadata.tables.values():
        for constraint in table.constraints:
            if constraint.name == constraint_name and isinstance(constraint, ColumnCollectionConstraint):
                columns = ", ".join(f"{table.name}.{column.name}" for column in constraint.columns)
                return message.endswith(f"constraint failed: {columns}")
    return False


class _RowBefore(ColumnElement[bool]):
    """`(a, b) < (x, y)`, in the form each backend's optimizer can seek an index with (see row_before)."""

    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012  (SQLAlchemy's cache key protocol)
        ("row", InternalTraversal.dp_clauseelement),
        ("expanded", InternalTraversal.dp_clauseelement),
    ]
    type = Boolean()
    _is_implicitly_boolean = True  # else a WHERE on a backend without booleans appends `= 1`

    def __init__(self, row: ColumnElement[bool], expanded: ColumnElement[bool]) -> None:
        self.row = row
        self.expanded = expanded


@compiles(_RowBefore)
def _compile_row_before(element: _RowBefore, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.row, **kw)


@compiles(_RowBefore, "mysql")
@compiles(_RowBefore, "mariadb")
def _compile_expanded_row_before(element: _RowBefore, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.expanded, **kw)


def row_before(
    leading: SQLColumnExpression[Any], tie: SQLColumnExpression[Any], after: tuple[Any, Any]
) -> ColumnElement[bool]:
    """`(leading, tie) < after`: a keyset page's position, as a condition an index on
    (..., leading, tie) seeks to whatever the depth, rather than a filter over every newer row.

    PostgreSQL and SQLite take the row comparison as an index condition. MariaDB 10.11
    does not (it reads the index from its start, `type: index`); there it is
    `leading <= x AND (leading < x OR tie < y)`, whose first term is a range.
    """
    value, tie_value = after
    row = tuple_(leading, tie) < tuple_(value, tie_value)
    expanded = and_(leading <= value, or_(leading < value, tie < tie_value))
    return _RowBefore(row, expanded)


def row_at_or_after(
    leading: SQLColumnExpression[Any], tie: SQLColumnExpression[Any], floor: tuple[Any, Any]
) -> ColumnElement[bool]:
    """`(leading, tie) >= floor`: the other end of a bounded walk (search.py), in the same
    forms as row_before (on MariaDB `leading >= x AND (leading > x OR tie >= y)`, a range)."""
    value, tie_value = floor
    row = tuple_(leading, tie) >= tuple_(value, tie_value)
    expanded = and_(leading >= value, or_(leading > value, tie >= tie_value))
    return _RowBefore(row, expanded)
