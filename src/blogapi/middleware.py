"""Pure ASGI middleware (BaseHTTPMiddleware would run the app in another task, see PITFALLS D4)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blogapi.errors import PayloadTooLarge, problem_response


class BodySizeLimit:
    """Refuse request bodies over `limit` bytes with 413, without reading them into memory.

    A declared Content-Length over the limit is refused before the body is read; a chunked
    body is counted as it streams and refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    response = problem_response(413, f"request body exceeds {self.limit} bytes")
                    await response(scope, receive, send)
                    return
                break

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise PayloadTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)


class RetryTransientErrors:
    """Run a request again, whole, when its transaction hit a deadlock or a stale version.

    Every transaction commits before its response starts (see `db.SessionDep`), so a
    transient failure is known before anything reaches the client: the error handler flags
    it in the request state, and this middleware discards that response and replays the
    request body into a fresh attempt, a bounded number of times with jitter.
    """

    def __init__(self, app: ASGIApp, attempts: int = 3) -> None:
        self.app = app
        self.attempts = attempts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body: list[Message] = []

        async def recording_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message)
            return message

        for attempt in range(1, self.attempts + 1):
            attempt_receive = recording_receive if attempt == 1 else _replay(body, receive)
            if not await self._attempt(scope, attempt_receive, send, body, last=attempt == self.attempts):
                return
            await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)  # noqa: S311  (jitter)

    async def _attempt(
        self, scope: Scope, receive: Receive, send: Send, body: list[Message], *, last: bool
    ) -> bool:
        """Run the app once; True if its response was discarded for a retry."""
        state: dict[str, Any] = scope.setdefault("state", {})
        state.pop("retry_transaction", None)
        discarded = False

        async def guarded_send(message: Message) -> None:
            nonlocal discarded
            # A body read only in part cannot be replayed (no endpoint here does that).
            replayable = not body or not body[-1].get("more_body", False)
            if message["type"] == "http.response.start" and state.get("retry_transaction"):
                discarded = replayable and not last
            if not discarded:
                await send(message)

        await self.app(scope, receive, guarded_send)
        return discarded


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replaying_receive() -> Message:
        return pending.pop(0) if pending else await receive()

    return replaying_receive
