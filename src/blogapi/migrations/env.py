"""Alembic environment: async engine, every backend, run from `blogapi db` or `alembic`."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncEngine

from blogapi import search
from blogapi.config import get_settings
from blogapi.db import create_engine
from blogapi.models import Base

config = context.config
target_metadata = Base.metadata


def include_object(
    _object: object, name: str | None, _type: str, _reflected: bool, _compare_to: object
) -> bool:
    # Each backend's text search structures (search.py) exist on that backend only, and
    # are the migrations' alone: autogenerate does not compare them with the models.
    return not search.is_search_object(name)


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    if connection.dialect.name == "sqlite":
        violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if violations:
            raise RuntimeError(f"migration left foreign keys pointing nowhere: {violations[:5]}")


def migration_engine() -> AsyncEngine:
    url = config.attributes.get("database_url") or get_settings().database_url
    engine = create_engine(get_settings().model_copy(update={"database_url": url}), pooled=False)
    if engine.dialect.name == "sqlite":
        # A batch migration drops and re-creates tables: with foreign keys on, dropping
        # `user` would cascade-delete every post. The app's connections keep them on.
        @event.listens_for(engine.sync_engine, "connect")
        def foreign_keys_off(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=OFF")
            cursor.close()

    return engine


async def run_async_migrations() -> None:
    engine = migration_engine()
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
asyncio.run(run_async_migrations())
