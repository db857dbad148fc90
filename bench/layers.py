"""Where a GET's time goes: the CPU each layer adds, measured in one process without HTTP.

`make bench` compares whole servers; this splits one request, GET /api/v1/posts/{id}, into
the layers it passes through and measures each stack from the driver up, so that the cost
of a layer is the difference between two lines:

1. asyncpg: a pooled connection and one prepared statement (what raw.py does).
2. SQLAlchemy Core on a connection the loop holds: blogapi's read statement, executed.
3. ... with a pool checkout and checkin per request.
4. ... with the checkout as blogapi's read engine makes it (autocommit as an execution option).
5. FastAPI over asyncpg: routing, the path parameter, the response model, layer 1's query.
6. blogapi's app, as shipped (`blogapi.main.create_app`).

Each line is the process's CPU time per request (user + system), over `--requests`
requests issued by 16 concurrent tasks, after a warm-up; the database's own CPU is not in
it. The ASGI server (uvicorn: HTTP parsing, sockets) comes on top of layers 5 and 6.

    BENCH_POSTGRES_URL=postgresql+asyncpg://root@127.0.0.1:5432/blogapi_bench \
        .venv/bin/python bench/layers.py

It needs the seeded benchmark database (`make bench` creates it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).parent / "baselines"))

from raw import SQL_POST

from blogapi.config import Settings
from blogapi.db import Database, create_engine
from blogapi.main import create_app
from blogapi.posts.schemas import PostRead
from blogapi.posts.service import _POST_BY_ID, _view
from blogapi.users.schemas import Author

CONCURRENCY = 16
POSTS = 100_000  # ids are drawn from the seeded range
Call = Callable[[int], Awaitable[Any]]


async def per_request_cpu(call: Call, requests: int) -> float:
    """CPU microseconds per call, `CONCURRENCY` calls at a time."""
    for number in range(300):
        await call(number + 1)

    async def worker(offset: int) -> None:
        for number in range(requests // CONCURRENCY):
            await call((number * CONCURRENCY + offset) % POSTS + 1)

    started = time.process_time()
    await asyncio.gather(*(worker(offset) for offset in range(CONCURRENCY)))
    return (time.process_time() - started) / requests * 1e6


def asgi_get(app: Any, path: Callable[[int], str]) -> Call:
    """Call an ASGI app in process, as a server would for a GET; checks for 200."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def call(post_id: int) -> None:
        statuses = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        target = path(post_id)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": target,
            "raw_path": target.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), (b"user-agent", b"bench")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)
        if statuses != [200]:
            raise RuntimeError(f"GET {target} answered {statuses}")

    return call


def fastapi_over_asyncpg(pool: asyncpg.Pool) -> FastAPI:
    app = FastAPI()

    @app.get("/posts/{post_id}")
    async def read_post(post_id: int) -> PostRead:
        async with pool.acquire() as connection:
            row = await connection.fetchrow(SQL_POST, post_id)
        return PostRead(
            id=row["id"],
            title=row["title"],
            body=row["body"],
            author=Author(id=row["author_id"], name=row["author_name"]),
            tags=row["tags"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    return app


async def measure(url: str, requests: int) -> list[tuple[str, float]]:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(dsn, min_size=CONCURRENCY, max_size=CONCURRENCY)
    plain = create_async_engine(url, pool_size=CONCURRENCY, isolation_level="AUTOCOMMIT")
    settings = Settings(database_url=url, pool_size=CONCURRENCY, secret_key="layers" * 8)
    database = Database.from_engine(create_engine(settings))
    results = []
    try:

        async def driver(post_id: int) -> None:
            async with pool.acquire() as connection:
                await connection.fetchrow(SQL_POST, post_id)

        results.append(("asyncpg: pool + prepared statement", await per_request_cpu(driver, requests)))

        held = [await plain.connect() for _ in range(CONCURRENCY)]
        free = list(held)

        async def core_held(post_id: int) -> None:
            connection = free.pop()
            try:
                _view((await connection.execute(_POST_BY_ID, {"post_id": post_id})).one())
            finally:
                free.append(connection)

        results.append(("SQLAlchemy Core, connection held", await per_request_cpu(core_held, requests)))
        for connection in held:
            await connection.close()

        async def core(post_id: int) -> None:
            async with plain.connect() as connection:
                _view((await connection.execute(_POST_BY_ID, {"post_id": post_id})).one())

        results.append(("... + checkout per request", await per_request_cpu(core, requests)))

        async def read_engine(post_id: int) -> None:
            async with database.read_engine.connect() as connection:
                _view((await connection.execute(_POST_BY_ID, {"post_id": post_id})).one())

        results.append(
            (
                "... + autocommit as an execution option (blogapi)",
                await per_request_cpu(read_engine, requests),
            )
        )

        fastapi_app = fastapi_over_asyncpg(pool)
        results.append(
            (
                "FastAPI over asyncpg",
                await per_request_cpu(asgi_get(fastapi_app, lambda i: f"/posts/{i}"), requests),
            )
        )

        blogapi = create_app(settings, database)
        async with LifespanManager(blogapi) as manager:
            call = asgi_get(manager.app, lambda i: f"/api/v1/posts/{i}")
            results.append(("blogapi (create_app)", await per_request_cpu(call, requests)))
    finally:
        await pool.close()
        await plain.dispose()
        await database.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=8000, help="requests per line (default 8000)")
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "BENCH_POSTGRES_URL", "postgresql+asyncpg://root@127.0.0.1:5432/blogapi_bench"
        ),
    )
    options = parser.parse_args()
    results = uvloop.run(measure(options.url, options.requests))
    print("| layers, GET /api/v1/posts/{id} | CPU µs per request |")
    print("|---|---:|")
    for name, cpu in results:
        print(f"| {name} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
