"""Pure ASGI middleware (BaseHTTPMiddleware would run the app in another task, see PITFALLS D4)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blogapi.errors import PayloadTooLarge, ProblemType, problem_response

# Browsers must not guess another type than the one declared (a JSON body sniffed as HTML).
NOSNIFF = (b"x-content-type-options", b"nosniff")


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
                    response = problem_response(
                        413,
                        f"request body exceeds {self.limit} bytes",
                        headers={"X-Content-Type-Options": "nosniff"},
                    )
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

    Every response but a 500 (see `errors._server_error`) and an early 413 passes its
    `send`, which is why it also does, at no extra layer's cost: `X-Content-Type-Options:
    nosniff` on each response, and HEAD, answered by the GET route with its headers
    (Content-Length, ETag) and without its body (RFC 9110 9.3.2).
    """

    def __init__(self, app: ASGIApp, attempts: int = 3) -> None:
        self.app = app
        self.attempts = attempts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "HEAD":
            # A copy: the server's own scope (its access log) still says HEAD.
            scope = {**scope, "method": "GET"}
            send = _without_body(send)
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
            if message["type"] == "http.response.start":
                if state.get("retry_transaction"):
                    discarded = replayable and not last
                message["headers"] = [*message.get("headers", ()), NOSNIFF]
            if not discarded:
                await send(message)

        await self.app(scope, receive, guarded_send)
        return discarded


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replaying_receive() -> Message:
        return pending.pop(0) if pending else await receive()

    return replaying_receive


def _without_body(send: Send) -> Send:
    async def send_headers_only(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return send_headers_only


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered as a problem, like every other error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        # Starlette's refusal is text/plain: "Disallowed CORS origin, headers" and the like.
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-type", "content-length")
        }
        detail = bytes(response.body).decode().replace("Disallowed", "disallowed")
        return problem_response(
            response.status_code, detail, headers=headers, problem_type=ProblemType.CORS_REFUSED
        )
