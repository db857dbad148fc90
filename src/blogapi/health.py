"""Health, readiness (and its turn to 503 when shutdown starts) and the version being run.

Stopping: uvicorn (`blogapi serve`, `uvicorn blogapi.asgi:app`) stops on SIGTERM or SIGINT
by closing its listener, letting the requests in flight finish (SHUTDOWN_TIMEOUT), and
running the lifespan's end (the pool is disposed). `draining` puts itself in front of
uvicorn's handler of those signals: /health/ready answers 503 from the signal on, and on a
first SIGTERM uvicorn is told SHUTDOWN_DRAIN seconds later (0: at once), so that a load
balancer probing readiness takes the instance out before its listener closes. A second
signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from functools import cache
from importlib import resources
from types import FrameType
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field
from sqlalchemy import Connection

from blogapi import __version__
from blogapi.config import Settings
from blogapi.db import ReplicaState, get_database
from blogapi.errors import ServiceUnavailable, _note_unavailable, database_cause, error_responses

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/health", tags=["health"])
version_router = APIRouter(tags=["health"])

SHUTTING_DOWN = "the service is shutting down"
REVISION_FILE = "REVISION"
"""A file of the package, written when a build is made (`git rev-parse HEAD > src/blogapi/REVISION`)."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

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

    503 from the moment the server is told to stop (SIGTERM), so that a load balancer drains it.
    """
    if getattr(request.app.state, "shutting_down", False):
        _note_unavailable(request, "shutting_down")
        raise ServiceUnavailable(SHUTTING_DOWN)
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


# --- version ----------------------------------------------------------------------------


class Version(BaseModel):
    version: str = Field(description="The version of the blogapi package.")
    revision: str | None = Field(
        description="The source revision of the build (BLOGAPI_REVISION, or the package's REVISION"
        " file); null when unknown."
    )
    schema_revision: str | None = Field(
        description="The database's schema revision (Alembic), read once; null while the database"
        " cannot be read."
    )
    expected_schema_revision: str = Field(
        description="The schema revision this version needs (its migrations' head)."
    )


@cache
def _built_revision() -> str | None:
    """The revision written into the package at build time, if any (read once)."""
    try:
        text = resources.files("blogapi").joinpath(REVISION_FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text.strip()[:64] or None


def source_revision(settings: Settings) -> str | None:
    return settings.revision or _built_revision()


@version_router.get("/version")
async def version(request: Request) -> Version:
    """What is running: the package version, the source revision and the database's schema revision."""
    state = request.app.state
    schema: str | None = getattr(state, "schema_revision", None)
    if schema is None:
        try:
            async with get_database(request).engine.connect() as connection:
                revisions = await connection.run_sync(_schema_revisions)
        except Exception as exc:
            logger.warning("version: the schema revision is unknown: %s", database_cause(request, exc))
        else:
            schema = ",".join(revisions) or None
            state.schema_revision = schema
    return Version(
        version=__version__,
        revision=source_revision(state.settings),
        schema_revision=schema,
        expected_schema_revision=head_revision(),
    )


# --- stopping ---------------------------------------------------------------------------


def _is_uvicorns(handler: object) -> bool:
    """Whether a signal handler is uvicorn's `Server.handle_exit` (the server is uvicorn)."""
    owner = getattr(handler, "__self__", None)
    return type(owner).__module__.startswith("uvicorn.") and getattr(handler, "__name__", "") == "handle_exit"


@contextlib.contextmanager
def draining(app: FastAPI, settings: Settings) -> Iterator[None]:
    """For the lifespan: mark the app not ready on SIGTERM/SIGINT, before uvicorn stops listening.

    Only under uvicorn, whose handlers are in place while the lifespan starts; elsewhere
    (tests, another server) nothing changes.
    """
    app.state.shutting_down = False
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    servers: dict[int, Callable[[int, FrameType | None], Any]] = {}
    for stop_signal in STOP_SIGNALS:
        handler = signal.getsignal(stop_signal)
        if _is_uvicorns(handler):
            servers[stop_signal] = handler  # type: ignore[assignment]

    def stopping(number: int, frame: FrameType | None) -> None:
        first = not app.state.shutting_down
        app.state.shutting_down = True
        drain = settings.shutdown_drain if first and number == signal.SIGTERM else 0
        # Not logged here: a signal handler may run while the logging lock is held.
        loop.call_soon_threadsafe(_log_stopping, signal.Signals(number).name, drain)
        if drain > 0:
            loop.call_soon_threadsafe(loop.call_later, drain, servers[number], number, None)
        else:
            servers[number](number, frame)

    for handled in servers:
        signal.signal(handled, stopping)
    try:
        yield
    finally:
        for handled, server_handler in servers.items():
            if signal.getsignal(handled) is stopping:
                signal.signal(handled, server_handler)


def _log_stopping(name: str, drain: float) -> None:
    if drain > 0:
        logger.info("%s: not ready from now on; the listener closes in %g s", name, drain)
    else:
        logger.info("%s: not ready from now on; the listener closes", name)
