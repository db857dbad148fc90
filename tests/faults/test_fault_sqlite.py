"""SQLite under many concurrent writers: in one process, and in two worker processes on one file."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from conftest import Accounts, upgrade
from fault_support import (
    TAGS_PER_POST,
    assert_whole_and_stored,
    create_writers,
    free_port,
    post_body,
    serve,
    server_env,
    tag_counts,
)

from blogapi.config import Settings

WRITERS = 32
ROUNDS = 3
SHARED_POSTS = 4
REQUEST_TIMEOUT = 60  # far past the busy timeout (10 s): a request waiting longer is stuck

Send = Callable[[str, str, dict[str, str], dict[str, object]], Awaitable[httpx.Response]]


async def _write_concurrently(send: Send, headers: list[dict[str, str]]) -> tuple[set[int], list[str]]:
    """Every writer, each round at once: publish a post, and change one of a few shared posts.

    Each PATCH reads the post and then writes it (and its tags), the SQLite pattern that
    fails with "database is locked" when a deferred transaction is upgraded to a write.
    Returns the acknowledged new posts and checks the shared posts lost no acknowledged change.
    """
    _, first = await _checked(send("POST", "/api/v1/posts", headers[0], post_body("shared-0")), 201)
    shared = [first["id"]]
    for number in range(1, SHARED_POSTS):
        _, created = await _checked(
            send("POST", "/api/v1/posts", headers[0], post_body(f"shared-{number}")), 201
        )
        shared.append(created["id"])
    acknowledged = set(shared)
    changes: Counter[int] = Counter()
    unexpected: list[str] = []

    async def write(round_number: int, writer: int) -> None:
        target = shared[writer % SHARED_POSTS]
        label = f"r{round_number}w{writer}"
        change: dict[str, object] = {
            "title": f"changed {label}",
            "tags": ["changed", f"c{label}", f"d{label}"],
        }
        posted, patched = await asyncio.gather(
            send("POST", "/api/v1/posts", headers[writer], post_body(label)),
            send("PATCH", f"/api/v1/posts/{target}", headers[writer], change),
        )
        for response, expected in ((posted, 201), (patched, 200)):
            if response.status_code != expected:
                unexpected.append(
                    f"{response.request.method} -> {response.status_code}: {response.text[:300]}"
                )
        if posted.status_code == 201:
            acknowledged.add(posted.json()["id"])
        if patched.status_code == 200:
            changes[target] += 1

    for round_number in range(ROUNDS):
        async with asyncio.timeout(REQUEST_TIMEOUT):
            await asyncio.gather(*(write(round_number, writer) for writer in range(len(headers))))

    # Every acknowledged change counted: the version is 1 + the number of 200s, no update lost.
    for post_id in shared:
        response = await send("GET", f"/api/v1/posts/{post_id}", {}, {})
        assert response.status_code == 200, response.text
        # The ETag is `"<post version>.<author version>"`; no author changes here.
        version = response.headers["etag"].strip('"').split(".")[0]
        assert version == str(1 + changes[post_id]), (post_id, changes[post_id], response.headers["etag"])
        assert len(response.json()["tags"]) == TAGS_PER_POST
    return acknowledged, unexpected


async def _checked(request: Awaitable[httpx.Response], status: int) -> tuple[httpx.Response, dict[str, int]]:
    response = await request
    assert response.status_code == status, response.text
    body: dict[str, int] = response.json()
    return response, body


def _sender(client: httpx.AsyncClient) -> Send:
    async def send(
        method: str, path: str, headers: dict[str, str], body: dict[str, object]
    ) -> httpx.Response:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            return await client.request(method, path, headers=headers, json=body or None)

    return send


@pytest.mark.backends("sqlite")
async def test_32_concurrent_writers_on_sqlite_get_no_5xx_and_every_acknowledged_write_is_stored(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    # Admins, so that every writer may change the shared posts.
    writers = [await accounts.create(admin=True) for _ in range(WRITERS)]
    acknowledged, unexpected = await _write_concurrently(
        _sender(client), [writer.headers for writer in writers]
    )
    assert not unexpected, f"{len(unexpected)} unexpected answers, first ones: {unexpected[:10]}"
    assert len(acknowledged) == SHARED_POSTS + WRITERS * ROUNDS
    assert_whole_and_stored(acknowledged, await tag_counts(settings.database_url))


async def test_two_worker_processes_on_one_sqlite_file_give_32_concurrent_writers_no_5xx(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'workers.db'}"
    await asyncio.to_thread(upgrade, url)
    writers = await create_writers(url, WRITERS, admin=True)
    port = free_port()
    blogapi = str(Path(sys.executable).parent / "blogapi")
    argv = [blogapi, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    async with (
        serve(argv, server_env(url), tmp_path, port) as server,
        httpx.AsyncClient(
            base_url=server.base_url,
            timeout=REQUEST_TIMEOUT,
            limits=httpx.Limits(max_connections=2 * WRITERS),
        ) as client,
    ):
        acknowledged, unexpected = await _write_concurrently(
            _sender(client), [writer.headers for writer in writers]
        )
    assert not unexpected, f"{len(unexpected)} unexpected answers, first ones: {unexpected[:10]}"
    assert len(acknowledged) == SHARED_POSTS + WRITERS * ROUNDS
    assert_whole_and_stored(acknowledged, await tag_counts(url))
    log = server.output()
    assert "Traceback" not in log, log[-5000:]
    assert "database is locked" not in log, log[-5000:]
