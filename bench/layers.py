"""Where a request's time goes: the CPU each layer adds, measured in one process without HTTP.

`make bench` compares whole servers; this splits a request into the layers it passes
through and measures each stack from the driver up, so that the cost of a layer is the
difference between two lines. Three requests, one table each:

GET /api/v1/posts/{id}
1. asyncpg: a pooled connection and one prepared statement (what raw.py does).
2. SQLAlchemy Core on a connection the loop holds: blogapi's read statement, executed.
3. ... with a pool checkout and checkin per request.
4. ... with the checkout as blogapi's read engine makes it (autocommit as an execution option).
5. FastAPI over asyncpg: routing, the path parameter, the response model, layer 1's query.
6. blogapi's app, as shipped (`blogapi.main.create_app`).

GET /api/v1/users/{id} (anonymous)
1. asyncpg: raw.py's statement.
2. SQLAlchemy Core: blogapi's user lookup on its read engine.
3. FastAPI over asyncpg: the path parameter, the response model, layer 1's query.
4. blogapi's app.

POST /api/v1/posts (two tags)
1. asyncpg: raw.py's two statements (the new tags; the post and its links in one CTE).
2. SQLAlchemy Core: blogapi's transaction (the caller's row, the post, the tags, the links).
3. FastAPI over asyncpg: the JSON body validated into blogapi's PostCreate, the bearer
   token verified, layer 1's statements, blogapi's PostRead as the response.
4. blogapi's app, with a bearer token.

Each line is the process's CPU time per request (user + system), over `--requests`
requests issued by 16 concurrent tasks, after a warm-up; the database's own CPU is not in
it. The ASGI server (uvicorn: HTTP parsing, sockets) comes on top of the FastAPI and
blogapi lines. The POST lines add posts to the benchmark database; `make bench` deletes
every post beyond the seeded ones before it runs.

    BENCH_POSTGRES_URL=postgresql+asyncpg://root@127.0.0.1:5432/blogapi_bench \
        .venv/bin/python bench/layers.py

It needs the seeded benchmark database (`make bench` creates it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import uvloop
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).parent / "baselines"))

from raw import SQL_INSERT_POST, SQL_INSERT_TAGS, SQL_POST, SQL_USER, _keep_session

from blogapi.auth.dependencies import current_user
from blogapi.auth.security import create_access_token, read_access_token
from blogapi.auth.sessions import service as sessions_service
from blogapi.config import Settings
from blogapi.db import Database, create_engine
from blogapi.main import create_app
from blogapi.posts import service as posts_service
from blogapi.posts.schemas import PostCreate, PostRead
from blogapi.posts.service import _POST_BY_ID, _view
from blogapi.users import service as users_service
from blogapi.users.schemas import Author, UserRead

CONCURRENCY = 16
POSTS = 100_000  # ids are drawn from the seeded ranges
USERS = 10_000
AUTHOR = 1  # the POST lines write as user 1, in a session the benchmark starts
TITLE = "A post written by bench/layers.py"
TEXT = "About as long as a short seeded paragraph, so that the row and the JSON have a realistic size."
TAGS = ["python", "sql"]
Call = Callable[[int], Awaitable[Any]]
# Module level: FastAPI resolves a route's (postponed) annotations in the module's namespace.
BearerToken = Annotated[str, Depends(OAuth2PasswordBearer(tokenUrl="/token"))]
Table = list[tuple[str, float]]


async def per_request_cpu(call: Call, requests: int) -> float:
    """CPU microseconds per call, `CONCURRENCY` calls at a time."""
    for number in range(300):
        await call(number + 1)

    async def worker(offset: int) -> None:
        for number in range(requests // CONCURRENCY):
            await call(number * CONCURRENCY + offset + 1)

    started = time.process_time()
    await asyncio.gather(*(worker(offset) for offset in range(CONCURRENCY)))
    return (time.process_time() - started) / requests * 1e6


def asgi_call(
    app: Any,
    target: Callable[[int], str],
    *,
    method: str = "GET",
    body: bytes = b"",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    expect: int = 200,
) -> Call:
    """Call an ASGI app in process, as a server would; checks the status."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    all_headers = [(b"host", b"127.0.0.1"), (b"user-agent", b"bench"), *headers]
    if body:
        all_headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def call(number: int) -> None:
        statuses = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        path = target(number)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": all_headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)
        if statuses != [expect]:
            raise RuntimeError(f"{method} {path} answered {statuses}")

    return call


def post_path(number: int) -> str:
    return f"/api/v1/posts/{number % POSTS + 1}"


def user_path(number: int) -> str:
    return f"/api/v1/users/{number % USERS + 1}"


def fastapi_over_asyncpg(pool: asyncpg.Pool, secret: str) -> FastAPI:
    """The three endpoints with FastAPI's routing, validation and serialization, and raw SQL."""
    app = FastAPI()

    @app.get("/api/v1/posts/{post_id}")
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

    @app.get("/api/v1/users/{user_id}")
    async def read_user(user_id: int) -> UserRead:
        async with pool.acquire() as connection:
            row = await connection.fetchrow(SQL_USER, user_id)
        return UserRead(
            id=row["id"],
            name=row["name"],
            email=None,
            is_admin=row["is_admin"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    @app.post("/api/v1/posts", status_code=status.HTTP_201_CREATED)
    async def create_post(data: PostCreate, token: BearerToken) -> PostRead:
        subject = read_access_token(token, secret=secret)
        if subject is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED)
        now = datetime.now(UTC)
        async with pool.acquire() as connection:
            await connection.execute(SQL_INSERT_TAGS, data.tags)
            row = await connection.fetchrow(
                SQL_INSERT_POST, subject.user_id, data.title, data.body, now, data.tags
            )
        return PostRead(
            id=row["id"],
            title=data.title,
            body=data.body,
            author=Author(id=subject.user_id, name=row["name"]),
            tags=data.tags,
            created_at=now,
            updated_at=now,
        )

    return app


async def measure(url: str, requests: int) -> dict[str, Table]:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(dsn, min_size=CONCURRENCY, max_size=CONCURRENCY, reset=_keep_session)
    plain = create_async_engine(url, pool_size=CONCURRENCY, isolation_level="AUTOCOMMIT")
    settings = Settings(database_url=url, pool_size=CONCURRENCY, secret_key="layers" * 8)
    secret = settings.secret_key.get_secret_value()
    database = Database.from_engine(create_engine(settings))
    async with database.engine.begin() as connection:
        issued = await sessions_service.start(connection, AUTHOR, "127.0.0.1", "bench/layers.py", settings)
    author_subject = issued.subject
    token = create_access_token(author_subject, secret=secret, lifetime=timedelta(hours=1))
    bearer = ((b"authorization", f"Bearer {token}".encode()),)
    post_body = json.dumps({"title": TITLE, "body": TEXT, "tags": TAGS}).encode()
    tables: dict[str, Table] = {
        "GET /api/v1/posts/{id}": [],
        "GET /api/v1/users/{id}": [],
        "POST /api/v1/posts": [],
    }
    get_post, get_user, create = tables.values()
    try:
        # GET /api/v1/posts/{id}
        async def driver(number: int) -> None:
            async with pool.acquire() as connection:
                await connection.fetchrow(SQL_POST, number % POSTS + 1)

        get_post.append(("asyncpg: pool + prepared statement", await per_request_cpu(driver, requests)))

        held = [await plain.connect() for _ in range(CONCURRENCY)]
        free = list(held)

        async def core_held(number: int) -> None:
            connection = free.pop()
            try:
                _view((await connection.execute(_POST_BY_ID, {"post_id": number % POSTS + 1})).one())
            finally:
                free.append(connection)

        get_post.append(("SQLAlchemy Core, connection held", await per_request_cpu(core_held, requests)))
        for connection in held:
            await connection.close()

        async def core(number: int) -> None:
            async with plain.connect() as connection:
                _view((await connection.execute(_POST_BY_ID, {"post_id": number % POSTS + 1})).one())

        get_post.append(("... + checkout per request", await per_request_cpu(core, requests)))

        async def read_engine(number: int) -> None:
            async with database.read_engine.connect() as connection:
                _view((await connection.execute(_POST_BY_ID, {"post_id": number % POSTS + 1})).one())

        get_post.append(
            (
                "... + autocommit as an execution option (blogapi)",
                await per_request_cpu(read_engine, requests),
            )
        )

        # GET /api/v1/users/{id}
        async def user_driver(number: int) -> None:
            async with pool.acquire() as connection:
                await connection.fetchrow(SQL_USER, number % USERS + 1)

        get_user.append(("asyncpg: pool + prepared statement", await per_request_cpu(user_driver, requests)))

        async def user_core(number: int) -> None:
            async with database.read_engine.connect() as connection:
                user = await users_service.read_user(connection, number % USERS + 1)
            users_service.to_read(user, viewer=None)

        get_user.append(
            ("SQLAlchemy Core: blogapi's lookup, read engine", await per_request_cpu(user_core, requests))
        )

        # POST /api/v1/posts
        async def post_driver(_number: int) -> None:
            async with pool.acquire() as connection:
                await connection.execute(SQL_INSERT_TAGS, TAGS)
                await connection.fetchrow(SQL_INSERT_POST, AUTHOR, TITLE, TEXT, datetime.now(UTC), TAGS)

        create.append(("asyncpg: raw.py's two statements", await per_request_cpu(post_driver, requests)))

        data = PostCreate(title=TITLE, body=TEXT, tags=TAGS)

        async def post_core(_number: int) -> None:
            async with database.engine.begin() as connection:
                author = await current_user(connection, author_subject)
                await posts_service.create_post(connection, author, data)

        create.append(("SQLAlchemy Core: blogapi's transaction", await per_request_cpu(post_core, requests)))

        # The same requests through FastAPI over asyncpg, then through blogapi.
        apps = (("FastAPI over asyncpg", fastapi_over_asyncpg(pool, secret)), ("blogapi (create_app)", None))
        for name, fastapi_app in apps:
            async with LifespanManager(fastapi_app or create_app(settings, database)) as manager:
                app = manager.app
                get_post.append((name, await per_request_cpu(asgi_call(app, post_path), requests)))
                get_user.append((name, await per_request_cpu(asgi_call(app, user_path), requests)))
                call = asgi_call(
                    app, lambda _: "/api/v1/posts", method="POST", body=post_body, headers=bearer, expect=201
                )
                create.append((name, await per_request_cpu(call, requests)))
    finally:
        await pool.close()
        await plain.dispose()
        await database.dispose()
    return tables


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
    for request, lines in uvloop.run(measure(options.url, options.requests)).items():
        print(f"| layers, {request} | CPU µs per request |")
        print("|---|---:|")
        for name, cpu in lines:
            print(f"| {name} | {cpu:.0f} |")
        print()


if __name__ == "__main__":
    main()
