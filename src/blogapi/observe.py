"""The outermost layer: a request id, an access log line and the metrics of every request.

One pure ASGI layer for all three (each layer of its own would wrap `send` again), outside
even Starlette's error layer, so that a 500 gets its id and its line too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blogapi import logs
from blogapi.auth import security
from blogapi.config import Settings
from blogapi.db import Database

if TYPE_CHECKING:  # importing metrics loads prometheus-client, which apps without metrics skip
    from blogapi.metrics import Metrics

UNMATCHED = "unmatched"
"""The route of a request no route matched (a 404): never its path, which is the client's choice."""
METRICS_ROUTE = "/metrics"
CLIENT_CLOSED = 499
"""The status logged for a request whose client went away before its response started (nginx's)."""

access_log = logs.FastLogger("blogapi.access")


def route_templates(app: FastAPI) -> dict[Callable[..., Any], str]:
    """Each endpoint's path template, prefix included (`/api/v1/posts/{post_id}`)."""
    templates: dict[Callable[..., Any], str] = {}
    for context in iter_route_contexts(app.routes):
        endpoint = getattr(context.original_route, "endpoint", None)
        if endpoint is not None and context.path_format is not None:
            templates.setdefault(endpoint, context.path_format)
    return templates


class RequestObserver:
    """Give each request an id, log its access line, count it in the metrics.

    The id is the client's `X-Request-ID` if well-formed (logs.REQUEST_ID_PATTERN), else a
    new random one; it is echoed in the response's `X-Request-ID`, is in every line logged
    while the request runs (a context variable) and in its problem details (`request_id`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        fastapi: FastAPI,
        settings: Settings,
        metrics: Metrics | None,
        tag_request: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.tag_request = tag_request
        self.fastapi = fastapi
        self.secret = settings.secret_key.get_secret_value()
        self.metrics = metrics
        self.templates: dict[Callable[..., Any], str] | None = None

    def route(self, scope: Scope) -> str:
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED
        if self.templates is None:  # the routes are all in place by the first request
            self.templates = route_templates(self.fastapi)
        return self.templates.get(endpoint, UNMATCHED)

    def user_id(self, authorization: bytes | None) -> int | None:
        """The user of a bearer token this process verified (a cache lookup, no verification)."""
        if authorization is None or authorization[:7].lower() != b"bearer ":
            return None
        return security.verified_user_id(authorization[7:].strip().decode("latin-1"), secret=self.secret)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = None
        authorization = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                text = value.decode("latin-1")
                if logs.REQUEST_ID_PATTERN.fullmatch(text):
                    request_id = text
            elif name == b"authorization":
                authorization = value
        if request_id is None:
            request_id = os.urandom(12).hex()
        token = logs.request_id_var.set(request_id)
        if self.tag_request is not None:
            self.tag_request(request_id)
        id_header = (b"x-request-id", request_id.encode())
        # The request's own copy, as the ASGI spec has servers do (asgi-lifespan, in tests,
        # hands every request the same dict): what the error handlers note is per request.
        state: dict[str, Any] = dict(scope.get("state") or ())
        scope["state"] = state
        status: int | None = None
        sent = 0

        async def observed_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])  # an HTTPStatus from some responses
                message["headers"] = [*message.get("headers", ()), id_header]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        metrics = self.metrics
        if metrics is not None:
            metrics.in_flight.inc()
        served_metrics = (
            metrics is not None and scope["path"] == METRICS_ROUTE and scope["method"] in ("GET", "HEAD")
        )
        try:
            if served_metrics:
                assert metrics is not None
                database: Database | None = getattr(self.fastapi.state, "database", None)
                await metrics.endpoint(scope, receive, observed_send, database)
            else:
                await self.app(scope, receive, observed_send)
        except asyncio.CancelledError:
            status = status or CLIENT_CLOSED
            raise
        except Exception:
            status = status or 500
            raise
        finally:
            seconds = time.perf_counter() - started
            route = METRICS_ROUTE if served_metrics else self.route(scope)
            method = scope["method"]
            final = status or CLIENT_CLOSED
            if metrics is not None:
                metrics.in_flight.dec()
                metrics.observe(method, route, final, seconds, state)
            if access_log.enabled():
                self.log(scope, method, route, final, seconds, sent, authorization, state)
            logs.request_id_var.reset(token)

    def log(
        self,
        scope: Scope,
        method: str,
        route: str,
        status: int,
        seconds: float,
        sent: int,
        authorization: bytes | None,
        state: dict[str, Any],
    ) -> None:
        client = scope.get("client")
        fields: dict[str, Any] = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "bytes": sent,
            "client": client[0] if client else None,
        }
        user_id = self.user_id(authorization)
        if user_id is not None:
            fields["user_id"] = user_id
        cause = state.get("unavailable_cause")
        if cause is not None and status == 503:
            fields["cause"] = cause
        access_log.info("request", **fields)


def install(app: FastAPI, settings: Settings) -> None:
    """Wrap the app's whole middleware stack (Starlette's error layer included) in a RequestObserver."""
    metrics = None
    if settings.metrics_enabled:
        from blogapi.metrics import Metrics

        metrics = Metrics(settings)
    app.state.metrics = metrics
    tag_request: Callable[[str], None] | None = None
    if getattr(app.state, "tracing", None) is not None:
        from blogapi import tracing

        tag_request = tracing.tag_request

    build = app.build_middleware_stack

    def build_observed_stack() -> ASGIApp:
        return RequestObserver(
            build(), fastapi=app, settings=settings, metrics=metrics, tag_request=tag_request
        )

    app.build_middleware_stack = build_observed_stack  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def running(app: FastAPI, database: Database) -> AsyncIterator[None]:
    """For the lifespan: with metrics on, sample the pool and hashing gauges while the app runs."""
    metrics: Metrics | None = app.state.metrics
    if metrics is None:
        yield
        return
    sampling = asyncio.create_task(metrics.sample_forever(database))
    try:
        yield
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        metrics.stopped()
