"""The practical upper bound: a bare ASGI app, an asyncpg pool and hand-written SQL.

It serves the endpoints the benchmark calls with blogapi's JSON shapes, over blogapi's
tables, and nothing else: no framework, no ORM, no validation library. Each endpoint is
one statement in autocommit (no BEGIN/COMMIT round trips); a post's author and sorted tag
names come back in the same row. JSON is the standard library's `json` (orjson is not in
blogapi's environment). POST takes the author from the body (`author_id`): there is no auth.

The pool does not reset a connection's session on release. asyncpg's default sends
`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;` each time a connection
goes back to the pool: a round trip per request that blogapi never pays (SQLAlchemy's pool
only rolls back, and its reads run in autocommit, so there is nothing to roll back). raw
sets no session state, so with `reset=_keep_session` it pays only what asyncpg still does
on release (a ROLLBACK if a transaction were left open): the tightest bound.

Run: DATABASE_URL=postgresql://root@127.0.0.1:5432/blogapi_bench \
    uvicorn raw:app --app-dir bench/baselines --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import base64
import json
import os
import unicodedata
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import asyncpg

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DSN = os.environ.get("DATABASE_URL", "postgresql://root@127.0.0.1:5432/blogapi_bench").replace(
    "postgresql+asyncpg://", "postgresql://"
)
POOL_SIZE = 15  # blogapi's pool_size + max_overflow
MAX_ID = 2**31 - 1
MAX_BODY_BYTES = 1_048_576

_POST_SELECT = """
SELECT p.id, p.title, p.body, p.created_at, p.updated_at, u.id AS author_id, u.name AS author_name,
       ARRAY(SELECT t.name FROM post_tag pt JOIN tag t ON t.id = pt.tag_id
             WHERE pt.post_id = p.id ORDER BY t.name) AS tags
FROM post p JOIN "user" u ON u.id = p.author_id
"""
SQL_POST = _POST_SELECT + "WHERE p.id = $1"
SQL_POSTS_PAGE = (
    _POST_SELECT
    + """
WHERE ($1::timestamptz IS NULL OR (p.created_at, p.id) < ($1, $2))
ORDER BY p.created_at DESC, p.id DESC LIMIT $3
"""
)
SQL_USER_POSTS_PAGE = (
    _POST_SELECT
    + """
WHERE p.author_id = $4 AND ($1::timestamptz IS NULL OR (p.created_at, p.id) < ($1, $2))
ORDER BY p.created_at DESC, p.id DESC LIMIT $3
"""
)
SQL_USER = 'SELECT id, name, is_admin, created_at, updated_at FROM "user" WHERE id = $1'
SQL_USER_EXISTS = 'SELECT 1 FROM "user" WHERE id = $1'
SQL_INSERT_TAGS = "INSERT INTO tag (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"
SQL_INSERT_POST = """
WITH new_post AS (
    INSERT INTO post (author_id, title, body, created_at, updated_at, title_folded)
    VALUES ($1, $2, $3, $4, $4, $6) RETURNING id, author_id
), links AS (
    INSERT INTO post_tag (post_id, tag_id, created_at)
    SELECT new_post.id, tag.id, $4 FROM new_post, tag WHERE tag.name = ANY($5::text[])
), counted AS (
    -- blogapi's tag.post_count, in the post's statement; tags locked in name order, as blogapi does
    UPDATE tag SET post_count = tag.post_count + 1
    FROM (SELECT id FROM tag WHERE name = ANY($5::text[]) ORDER BY name FOR UPDATE) AS locked
    WHERE tag.id = locked.id
)
SELECT new_post.id, u.name FROM new_post JOIN "user" u ON u.id = new_post.author_id
"""


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """The pool's reset: nothing to undo (see the module's docstring)."""


class HTTPError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def post_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "body": row["body"],
        "author": {"id": row["author_id"], "name": row["author_name"]},
        "tags": row["tags"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


def encode_cursor(row: asyncpg.Record) -> str:
    return base64.urlsafe_b64encode(f"{row['created_at'].isoformat()}|{row['id']}".encode()).decode()


def decode_cursor(cursor: str | None) -> tuple[datetime | None, int]:
    if cursor is None:
        return None, 0
    try:
        created_at, post_id = base64.urlsafe_b64decode(cursor).decode().split("|")
        return datetime.fromisoformat(created_at), int(post_id)
    except ValueError as exc:
        raise HTTPError(422, "the cursor is malformed") from exc


def path_id(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_ID:
        raise HTTPError(422, f"{text!r} is not an id")
    return int(text)


class App:
    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        try:
            status, payload = await self.route(scope, receive)
        except HTTPError as exc:
            status, payload = exc.status, {"status": exc.status, "detail": exc.detail}
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.pool = await asyncpg.create_pool(
                    DSN, min_size=POOL_SIZE, max_size=POOL_SIZE, reset=_keep_session
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.pool is not None:
                    await self.pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def route(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        assert self.pool is not None
        method: str = scope["method"]
        parts = scope["path"].strip("/").split("/")
        query = {key: values[-1] for key, values in parse_qs(scope["query_string"].decode()).items()}
        if parts[:2] == ["api", "v1"]:
            match method, parts[2:]:
                case "GET", ["posts", post_id]:
                    return await self.read_post(path_id(post_id))
                case "GET", ["posts"]:
                    # GET /posts says whether a search walk was capped (blogapi's
                    # SearchPage); without ?q= it never is.
                    return 200, {**await self.page(SQL_POSTS_PAGE, query), "search_capped": False}
                case "POST", ["posts"]:
                    return await self.create_post(await read_body(receive))
                case "GET", ["users", user_id]:
                    return await self.read_user(path_id(user_id))
                case "GET", ["users", user_id, "posts"]:
                    return await self.user_posts(path_id(user_id), query)
        elif method == "GET" and parts == ["health", "live"]:
            return 200, {"status": "ok"}
        elif method == "GET" and parts == ["health", "ready"]:
            await self.pool.fetchval("SELECT 1")
            return 200, {"status": "ok"}
        raise HTTPError(404, "not found")

    async def read_post(self, post_id: int) -> tuple[int, Any]:
        assert self.pool is not None
        row = await self.pool.fetchrow(SQL_POST, post_id)
        if row is None:
            raise HTTPError(404, f"post {post_id} not found")
        return 200, post_json(row)

    async def page(self, sql: str, query: dict[str, str], *extra: Any) -> dict[str, Any]:
        assert self.pool is not None
        try:
            limit = int(query.get("limit", "20"))
        except ValueError as exc:
            raise HTTPError(422, "limit must be an integer") from exc
        if not 1 <= limit <= 100:
            raise HTTPError(422, "limit must be between 1 and 100")
        created_at, post_id = decode_cursor(query.get("cursor"))
        rows = await self.pool.fetch(sql, created_at, post_id, limit + 1, *extra)
        next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return {"items": [post_json(row) for row in rows[:limit]], "next_cursor": next_cursor}

    async def user_posts(self, user_id: int, query: dict[str, str]) -> tuple[int, Any]:
        assert self.pool is not None
        page = await self.page(SQL_USER_POSTS_PAGE, query, user_id)
        if not page["items"] and await self.pool.fetchval(SQL_USER_EXISTS, user_id) is None:
            raise HTTPError(404, f"user {user_id} not found")
        return 200, page

    async def read_user(self, user_id: int) -> tuple[int, Any]:
        assert self.pool is not None
        row = await self.pool.fetchrow(SQL_USER, user_id)
        if row is None:
            raise HTTPError(404, f"user {user_id} not found")
        return 200, {
            "id": row["id"],
            "name": row["name"],
            "email": None,
            "is_admin": row["is_admin"],
            "is_active": None,  # shown only to the user themself and to admins
            "created_at": iso(row["created_at"]),
            "updated_at": iso(row["updated_at"]),
        }

    async def create_post(self, body: bytes) -> tuple[int, Any]:
        assert self.pool is not None
        title, text, tags, author_id = parse_post(body)
        now = datetime.now(UTC)
        async with self.pool.acquire() as connection:
            if tags:
                await connection.execute(SQL_INSERT_TAGS, tags)
            try:
                # blogapi's search copy of the title (db.fold_for_search), so that raw does its work too
                folded = unicodedata.normalize("NFC", unicodedata.normalize("NFD", title).casefold())
                row = await connection.fetchrow(SQL_INSERT_POST, author_id, title, text, now, tags, folded)
            except asyncpg.ForeignKeyViolationError as exc:
                raise HTTPError(422, f"user {author_id} not found") from exc
        assert row is not None
        return 201, {
            "id": row["id"],
            "title": title,
            "body": text,
            "author": {"id": author_id, "name": row["name"]},
            "tags": tags,
            "created_at": iso(now),
            "updated_at": iso(now),
        }


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPError(413, "request body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_post(body: bytes) -> tuple[str, str, list[str], int]:
    """Title, body, sorted distinct lower-cased tags and author id, or a 422."""
    try:
        data = json.loads(body)
        title, text, tags, author_id = (
            data["title"].strip(),
            data.get("body", ""),
            data["tags"],
            data["author_id"],
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HTTPError(422, "expected {title, body, tags, author_id}") from exc
    valid = (
        isinstance(text, str)
        and 1 <= len(title) <= 200
        and len(text) <= 20_000
        and isinstance(tags, list)
        and len(tags) <= 20
        and all(isinstance(tag, str) and 1 <= len(tag) <= 32 for tag in tags)
        and isinstance(author_id, int)
        and 1 <= author_id <= MAX_ID
    )
    if not valid:
        raise HTTPError(422, "invalid post")
    return title, text, sorted({tag.lower() for tag in tags}), author_id


app = App()
