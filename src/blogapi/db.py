"""The data layer's one place: declarative base, UTC datetime type, engine and session policy.

Everything that decides how blogapi talks to a database (drivers, pool, SQLite pragmas,
transaction boundaries) lives here, so that PgBouncer, read replicas or another pool
policy are a change to this module alone.
"""

from __future__ import annotations

import asyncio
import math
import time
import unicodedata
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any, TypeAlias
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
from sqlalchemy.exc import IntegrityError
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

from blogapi.config import DatabasePooler, Settings

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
    read_engine: AsyncEngine
    """The engine with read-only requests' options: on PostgreSQL, autocommit.

    A GET endpoint opens its connection itself (`async with database.read_engine.connect()`)
    and runs Core statements on it: no session, no identity map, and no yield dependency,
    which FastAPI wraps in an exit stack and a shielded cancel scope (together about a
    fifth of a simple GET's CPU, measured with bench/layers.py).
    """
    sessionmaker: async_sessionmaker[AsyncSession]
    read_sessionmaker: async_sessionmaker[AsyncSession]

    @classmethod
    def from_engine(cls, engine: AsyncEngine) -> Database:
        read_options: dict[str, Any] = {READ_ONLY: True}
        if engine.dialect.name == "postgresql" and not engine.get_execution_options().get(TRANSACTION_POOLED):
            # (Not through PgBouncer: asyncpg prepares a statement, then executes it, and
            # between the two an autocommit client holds no server connection.)
            # Under READ COMMITTED every statement sees its own snapshot anyway, so a read
            # gains nothing from BEGIN ... COMMIT but two round trips. asyncpg switches to
            # autocommit on the client side, without a round trip of its own.
            read_options["isolation_level"] = "AUTOCOMMIT"
        read_engine = engine.execution_options(**read_options)
        return cls(
            engine=engine,
            read_engine=read_engine,
            sessionmaker=async_sessionmaker(engine, expire_on_commit=False),
            read_sessionmaker=async_sessionmaker(read_engine, expire_on_commit=False),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls.from_engine(create_engine(settings))

    async def dispose(self) -> None:
        await self.engine.dispose()


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
