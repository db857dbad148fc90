"""Pure ASGI middleware (BaseHTTPMiddleware would run the app in another task, see PITFALLS D4)."""

from __future__ import annotations

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
