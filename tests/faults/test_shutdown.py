"""Stopping and restarting `blogapi serve`: SIGTERM under load, readiness while draining, a
worker killed with SIGKILL.

The requests in flight when the signal arrives are made certain, not left to chance: each
is a POST sent with `Expect: 100-continue` whose body is held back until uvicorn answers
`100 Continue` (the app is reading it: the request is in flight) and the server has logged
that it is shutting down; only then is the body sent, and the whole answer must come.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import PASSWORD, upgrade
from fault_support import (
    Server,
    Writer,
    assert_whole_and_stored,
    create_writers,
    free_port,
    post_body,
    serve,
    server_env,
    tag_counts,
)
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from blogapi.users.models import User

BLOGAPI = str(Path(sys.executable).parent / "blogapi")
CLIENTS = 6
HELD = 3
ANSWERED_BEFORE_SIGNAL = 12
WAIT_SECONDS = 120
METRICS_TOKEN = "metrics-token-for-the-shutdown-test"


def _log_lines(server: Server) -> list[dict[str, Any]]:
    """The server's JSON log lines (LOG_FORMAT=json); anything else (a traceback) is kept as text."""
    lines = []
    for line in server.output().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            lines.append({"event": line, "logger": "(not json)"})
    return lines


def _events(server: Server, event: str) -> int:
    return sum(1 for line in _log_lines(server) if line.get("event") == event)


async def _until(condition: Any, what: str, server: Server) -> None:
    """Wait (bounded) until `condition()` is true."""
    for _ in range(WAIT_SECONDS * 10):
        if condition():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"never happened: {what}\n{server.output()[-5000:]}")


# A request held in flight ------------------------------------------------------------------


@dataclass
class HeldRequest:
    """A POST whose headers the server has read and whose body it is waiting for."""

    request_id: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    body: bytes

    @classmethod
    async def start(cls, port: int, author: Writer, label: str) -> HeldRequest:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps(post_body(label)).encode()
        request_id = f"held-{label}"
        head = (
            "POST /api/v1/posts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nX-Request-ID: {request_id}\r\n"
            f"Authorization: {author.headers['Authorization']}\r\n\r\n"
        )
        writer.write(head.encode())
        await writer.drain()
        async with asyncio.timeout(WAIT_SECONDS):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        return cls(request_id, reader, writer, body)

    async def finish(self) -> tuple[int, dict[str, Any]]:
        """Send the body; the status and the JSON of the whole answer."""
        self.writer.write(self.body)
        await self.writer.drain()
        async with asyncio.timeout(WAIT_SECONDS):
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status = int(head.split(" ", 2)[1])
            headers = dict(line.lower().split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
            body = await self.reader.readexactly(int(headers["content-length"]))
        self.writer.close()
        return status, json.loads(body)


# The load ----------------------------------------------------------------------------------


@dataclass
class Load:
    answered: dict[str, int] = field(default_factory=dict)
    """Request id -> status, for every request whose whole answer arrived."""
    unanswered: set[str] = field(default_factory=set)
    """Requests that got no byte of an answer: their connection was refused or closed unread."""
    failures: list[str] = field(default_factory=list)
    posts: set[int] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    """Emails of the sign-ups answered 201."""


async def _client_loop(number: int, base_url: str, author: Writer, load: Load) -> None:
    """POST /posts, a sign-up (a password hash: slow) and GET /posts, until a request goes unanswered."""
    async with httpx.AsyncClient(base_url=base_url, timeout=WAIT_SECONDS) as client:
        for sequence in itertools.count():
            request_id = f"load-{number}-{sequence}"
            headers = {"X-Request-ID": request_id}
            email = f"signup-{number}-{sequence}@example.com"
            if sequence % 3 == 0:
                request = client.build_request(
                    "POST", "/api/v1/posts", json=post_body(request_id), headers=headers | author.headers
                )
            elif sequence % 3 == 1:
                request = client.build_request(
                    "POST",
                    "/api/v1/users",
                    json={"name": f"Signup {number}", "email": email, "password": PASSWORD},
                    headers=headers,
                )
            else:
                request = client.build_request("GET", "/api/v1/posts", params={"limit": 20}, headers=headers)
            try:
                response = await client.send(request, stream=True)
            except httpx.TimeoutException:
                load.failures.append(f"{request_id}: no answer within {WAIT_SECONDS} s")
                return
            except httpx.TransportError:
                # Refused, or the connection closed before any byte of an answer: the
                # server had stopped taking requests (the access log check below makes
                # sure it had not started this one).
                load.unanswered.add(request_id)
                return
            try:
                await response.aread()
            except httpx.TransportError as exc:
                load.failures.append(f"{request_id}: answer cut off ({exc.__class__.__name__}: {exc})")
                return
            finally:
                await response.aclose()
            load.answered[request_id] = response.status_code
            expected = 200 if request.method == "GET" else 201
            if response.status_code != expected:
                load.failures.append(f"{request_id}: {response.status_code} {response.text[:300]}")
            elif request.url.path == "/api/v1/posts" and request.method == "POST":
                load.posts.add(response.json()["id"])
            elif request.url.path == "/api/v1/users":
                load.users.add(email)


async def _stored_users(database_url: str, emails: set[str]) -> set[str]:
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(User.email).where(User.email.in_(sorted(emails))))
            return {email for (email,) in rows}
    finally:
        await engine.dispose()


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_under_load_answers_every_request_in_flight_stores_every_acknowledged_write_exits_0(
    scratch_database_url: str, tmp_path: Path, workers: int
) -> None:
    url = scratch_database_url
    await asyncio.to_thread(upgrade, url)
    authors = await create_writers(url, CLIENTS)
    temporary = tmp_path / "tmp"  # where `blogapi serve` makes its metrics directory
    temporary.mkdir()
    port = free_port()
    env = server_env(url, log_format="json", metrics_token=METRICS_TOKEN, signups_per_address=100_000)
    env["TMPDIR"] = str(temporary)
    argv = [BLOGAPI, "serve", "--port", str(port), "--workers", str(workers)]
    load = Load()
    async with serve(argv, env, tmp_path, port, ready_seconds=180) as server:
        [metrics_directory] = temporary.iterdir()
        assert metrics_directory.name.startswith("blogapi-metrics-")
        loops = [
            asyncio.create_task(_client_loop(number, server.base_url, author, load))
            for number, author in enumerate(authors)
        ]
        held = [await HeldRequest.start(port, authors[0], f"{workers}-{n}") for n in range(HELD)]
        await _until(lambda: len(load.answered) >= ANSWERED_BEFORE_SIGNAL, "the load got answers", server)

        server.process.send_signal(signal.SIGTERM)  # the main process only, as Kubernetes does
        await _until(
            lambda: _events(server, "Shutting down") >= workers, "every worker began shutting down", server
        )
        finished = [await request.finish() for request in held]
        async with asyncio.timeout(WAIT_SECONDS):
            await asyncio.gather(*loops)
            exit_code = await asyncio.to_thread(server.process.wait)
        lines = _log_lines(server)

    output = server.output()
    assert exit_code == 0, output[-5000:]
    assert not load.failures, f"{load.failures[:10]}\n{output[-5000:]}"
    assert [status for status, _ in finished] == [201] * HELD, finished
    load.posts |= {post["id"] for _, post in finished}
    assert_whole_and_stored(load.posts, await tag_counts(url))
    assert await _stored_users(url, load.users) == load.users

    # Every request the server started, it answered in full; the ones left unanswered it never began.
    answered = set(load.answered) | {request.request_id for request in held}
    handled = {
        line["request_id"]
        for line in lines
        if line.get("logger") == "blogapi.access" and line["request_id"].startswith(("load-", "held-"))
    }
    assert handled <= answered, f"started but not answered: {sorted(handled - answered)[:10]}"
    assert not handled & load.unanswered
    assert [line for line in lines if line.get("logger") == "(not json)"] == []
    # The lifespan ran to its end in every worker: the pool is closed.
    assert sum(1 for line in lines if line.get("event") == "database pool disposed") == workers
    assert not metrics_directory.exists()


async def test_readiness_turns_503_at_sigterm_while_the_listener_still_serves_for_shutdown_drain(
    scratch_database_url: str, tmp_path: Path
) -> None:
    """SHUTDOWN_DRAIN seconds for a load balancer to see the 503 and stop sending; a second
    SIGTERM ends the drain early (the test does not wait the drain out)."""
    url = scratch_database_url
    await asyncio.to_thread(upgrade, url)
    port = free_port()
    env = server_env(url, log_format="json", shutdown_drain=600)
    argv = [BLOGAPI, "serve", "--port", str(port)]
    async with (
        serve(argv, env, tmp_path, port, ready_seconds=180) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client,
    ):
        assert (await client.get("/health/ready")).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        for _ in range(WAIT_SECONDS * 10):
            ready = await client.get("/health/ready")
            if ready.status_code != 200:
                break
            await asyncio.sleep(0.1)
        assert ready.status_code == 503, ready.text
        assert ready.json()["detail"] == "the service is shutting down"
        assert "retry-after" in ready.headers
        # Still serving everything else while the load balancer drains it.
        assert (await client.get("/api/v1/posts")).status_code == 200
        assert (await client.get("/health/live")).status_code == 200
        assert server.process.poll() is None
        server.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_SECONDS):
            exit_code = await asyncio.to_thread(server.process.wait)
    assert exit_code == 0, server.output()[-5000:]
    events = [line.get("event") for line in _log_lines(server)]
    assert "SIGTERM: not ready from now on; the listener closes in 600 s" in events
    assert "SIGTERM: not ready from now on; the listener closes" in events


def _worker_pids(server: Server) -> list[int]:
    """The workers that started, in order (uvicorn logs each one's pid)."""
    pids = []
    for line in _log_lines(server):
        event = str(line.get("event", ""))
        if event.startswith("Started server process ["):
            pids.append(int(event.removeprefix("Started server process [").rstrip("]")))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child stays a zombie until its parent reaps it.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


async def test_serve_with_two_workers_replaces_a_worker_killed_with_sigkill_and_keeps_answering(
    scratch_database_url: str, tmp_path: Path
) -> None:
    url = scratch_database_url
    await asyncio.to_thread(upgrade, url)
    port = free_port()
    argv = [BLOGAPI, "serve", "--port", str(port), "--workers", "2"]
    async with serve(argv, server_env(url, log_format="json"), tmp_path, port, ready_seconds=180) as server:
        await _until(lambda: len(_worker_pids(server)) == 2, "two workers started", server)
        first, second = _worker_pids(server)
        os.kill(first, signal.SIGKILL)
        await _until(lambda: not _alive(first), f"worker {first} is gone", server)
        statuses: Counter[int] = Counter()
        for _ in range(20):
            # A new connection each time: the kernel hands it to whichever worker is alive.
            async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client:
                statuses[(await client.get("/api/v1/posts")).status_code] += 1
        await _until(lambda: len(_worker_pids(server)) == 3, "a new worker started", server)
        replacement = _worker_pids(server)[2]
        await _until(lambda: _events(server, "Application startup complete.") == 3, "it is up", server)
        assert _alive(replacement)
        assert _alive(second)
        for _ in range(20):
            async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client:
                statuses[(await client.get("/api/v1/posts")).status_code] += 1
        server.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_SECONDS):
            exit_code = await asyncio.to_thread(server.process.wait)
    assert statuses == Counter({200: 40})
    assert f"Child process [{first}] died" in [line.get("event") for line in _log_lines(server)]
    assert exit_code == 0, server.output()[-5000:]
    assert not _alive(replacement)
    assert not _alive(second)
