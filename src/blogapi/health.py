from __future__ import annotations

import logging
from functools import cache

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import Connection

from blogapi.db import ReplicaState, get_database
from blogapi.errors import ServiceUnavailable, database_cause, error_responses

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/health", tags=["health"])

UPGRADE_HINT = "run `blogapi db upgrade`"


class ReplicaHealth(BaseModel):
    address: str
    """Host, port and database of the replica."""
    state: ReplicaState
    """`streaming` replicas serve reads; `lagging`, `down` and (before the first check)
    `unknown` ones are skipped, and their reads go to the primary."""
    lag_seconds: float | None


class Health(BaseModel):
    status: str


class Readiness(Health):
    replicas: list[ReplicaHealth] | None = None
    """With READ_DATABASE_URL only: each read replica's state."""


@cache
def _shipped_migrations() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", "blogapi:migrations")
    return ScriptDirectory.from_config(config)


@cache
def head_revision() -> str:
    """The head of the migrations shipped with this version of blogapi (read once)."""
    head = _shipped_migrations().get_current_head()
    assert head is not None, "the shipped migrations have one head"
    return head


def _unknown(revisions: tuple[str, ...]) -> list[str]:
    """The revisions this version of blogapi does not ship: a newer release migrated the database."""
    shipped = {script.revision for script in _shipped_migrations().walk_revisions()}
    return [revision for revision in revisions if revision not in shipped]


def schema_mismatch(revisions: tuple[str, ...], head: str) -> str:
    """Why a schema at `revisions` is not the one this version needs, and what to do."""
    if not revisions:
        return f"the database has no schema: {UPGRADE_HINT}"
    unknown = _unknown(revisions)
    if unknown:
        return (
            f"the database schema is at {', '.join(unknown)}, which this version of blogapi does not know"
            f" (expected head {head}): a newer release migrated it; run that release, or downgrade"
            f" the database to {head} with it"
        )
    return f"the database schema is at {', '.join(revisions)}, expected head {head}: {UPGRADE_HINT}"


def _schema_revisions(connection: Connection) -> tuple[str, ...]:
    return MigrationContext.configure(connection).get_current_heads()


@router.get("/live")
async def live() -> Health:
    """The process answers."""
    return Health(status="ok")


@router.get("/ready", responses=error_responses(503), response_model_exclude_none=True)
async def ready(request: Request) -> Readiness:
    """The database answers, and its schema is the one this version of blogapi needs.

    With read replicas, their states too: a replica down or lagging is no reason to stop
    serving (reads go to the primary), so it does not make the answer a 503.
    """
    head = head_revision()
    database = get_database(request)
    try:
        async with database.engine.connect() as connection:
            revisions = await connection.run_sync(_schema_revisions)
    except Exception as exc:
        logger.error("not ready: the database is unreachable: %s", database_cause(request, exc))
        raise ServiceUnavailable("the database is unreachable") from exc
    if revisions != (head,):
        reason = schema_mismatch(revisions, head)
        logger.warning("not ready: %s", reason)
        raise ServiceUnavailable(reason)
    if not database.read_engine.replicas:
        return Readiness(status="ok")
    database.read_engine.watch()
    replicas = [
        ReplicaHealth(address=replica.address, state=replica.state, lag_seconds=replica.lag_seconds)
        for replica in database.read_engine.replicas
    ]
    return Readiness(status="ok", replicas=replicas)
