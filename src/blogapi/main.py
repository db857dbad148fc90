"""The application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security.base import SecurityBase
from fastapi.telemetry import TelemetryConfig

from blogapi import __version__, health, observe
from blogapi.auth.router import router as auth_router
from blogapi.auth.sessions.router import router as sessions_router
from blogapi.config import Settings, get_settings
from blogapi.db import COMMIT_LSN_HEADER, Database, ReadYourWrites
from blogapi.docs import install_docs
from blogapi.errors import PROBLEM_MEDIA_TYPE, error_responses, install_error_handlers
from blogapi.middleware import BodySizeLimit, ProblemCORSMiddleware, RetryTransientErrors
from blogapi.pagination import CursorCodec
from blogapi.posts.router import router as posts_router
from blogapi.users.router import router as users_router

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from blogapi.tracing import Tracing

API_PREFIX = "/api/v1"
# FastAPI's native OpenTelemetry, off unless tracing is (tracing.py): on, it would look up
# the global providers on every request.
TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

logger = logging.getLogger(__name__)

# Every header the API defines beyond the CORS-safelisted ones, by the way it travels: a
# browser page may send the request headers (preflights allow them) and read the response
# headers (exposed). A test checks this against the OpenAPI document.
REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "Idempotency-Key",
    "X-Request-ID",
    COMMIT_LSN_HEADER,
)
RESPONSE_HEADERS = (
    "ETag",
    "Location",
    "Retry-After",
    "Idempotent-Replayed",
    "WWW-Authenticate",
    "Allow",
    "X-Request-ID",
    COMMIT_LSN_HEADER,
)


def create_app(
    settings: Settings | None = None,
    database: Database | None = None,
    *,
    span_exporter: SpanExporter | None = None,
) -> FastAPI:
    """Build the app. Nothing connects until the lifespan starts.

    `database` lets a caller (tests, the benchmark) supply the engine; the app then
    leaves disposing it to them. `span_exporter` turns tracing on, each span sent to it
    as it ends (tests).
    """
    settings = settings or get_settings()
    tracing: Tracing | None = None
    telemetry = TELEMETRY_OFF
    if settings.tracing_exporter is not None or span_exporter is not None:
        from blogapi.tracing import Tracing  # imports the OpenTelemetry SDK: only when tracing

        tracing = Tracing(settings, span_exporter)
        telemetry = tracing.fastapi_telemetry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.database = database or Database.from_settings(settings)
        if app.state.database.read_engine.replicas:
            app.state.database.read_engine.watch()  # replicas are used once checked
        if tracing is not None:
            tracing.start(app.state.database)
        try:
            with health.draining(app, settings):
                async with observe.running(app, app.state.database):
                    yield
        finally:
            if database is None:
                await app.state.database.dispose()
                logger.info("database pool disposed")
            if tracing is not None:
                tracing.stop()

    app = FastAPI(
        title="blogapi",
        version=__version__,
        description=(
            "Users and their posts. Errors are RFC 9457 problem details; their `type` says what"
            " kind of error each is (see the `Problem` schema, or docs/problems.md). Every response"
            " carries an `X-Request-ID` header (the request's own, when it sent a well-formed one:"
            " 1-64 letters, digits, `.`, `_` or `-`), also in its problem details as `request_id`."
            " Where GET requests read from PostgreSQL replicas, a response to a request that wrote"
            " carries an `X-Commit-LSN` header (the primary's WAL position, such as `16/B374D848`):"
            " a GET that sends it back sees that write; a GET without it may see data a few seconds"
            " old, and one with a malformed value is read as if it sent none."
        ),
        lifespan=lifespan,
        telemetry=telemetry,
        # FastAPI's pages load Swagger UI and ReDoc from a CDN; install_docs serves them offline.
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=_operation_id,
    )
    # No redirect from `/posts/` to `/posts`: Starlette builds it from the Host header (an
    # absolute URL to wherever the client says), and a client should use the paths the
    # document gives. A trailing slash is a 404.
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.tracing = tracing
    app.state.cursor_codec = CursorCodec(settings.secret_key.get_secret_value().encode())

    # Any route that touches the database answers 503 + Retry-After when it cannot. Routes
    # are matched in order, one by one: the most requested come first.
    for router in (posts_router, users_router, auth_router, sessions_router):
        app.include_router(router, prefix=API_PREFIX, responses=error_responses(503))
    app.include_router(health.router)
    if settings.admin_enabled:
        from blogapi import admin  # Jinja2 and the templates load only for a console that is on

        admin.install(app)
    app.include_router(health.version_router)
    install_docs(app)
    install_error_handlers(app)

    if settings.cors_origins:
        app.add_middleware(
            ProblemCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "PATCH", "DELETE"],
            allow_headers=REQUEST_HEADERS,
            expose_headers=RESPONSE_HEADERS,
        )
    app.add_middleware(RetryTransientErrors)
    if settings.read_database_url:
        # Outside the retries: a request run again keeps its route and its commit.
        app.add_middleware(ReadYourWrites)
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    observe.install(app, settings)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _operation_id(route: APIRoute) -> str:
    """The endpoint's function name (`create_user`): what a generated client names its call."""
    return route.name


def _security_schemes(dependant: Dependant) -> list[SecurityBase]:
    schemes = [dependant.call] if isinstance(dependant.call, SecurityBase) else []
    for dependency in dependant.dependencies:
        schemes += _security_schemes(dependency)
    return schemes


def _takes_an_optional_token(dependant: Dependant) -> bool:
    """Whether every security scheme of an endpoint lets a request without credentials through.

    FastAPI declares a scheme made with `auto_error=False` as required all the same.
    """
    schemes = _security_schemes(dependant)
    return bool(schemes) and not any(getattr(scheme, "auto_error", True) for scheme in schemes)


OPTIONAL_CREDENTIALS_NOTE = (
    "**Token optional.** Anyone may call this without credentials. With a bearer token "
    "(`Authorization: Bearer ...`), the answer shows what that caller may see: their own "
    "email, or every email to an admin. An invalid or expired token is a 401, not an "
    "anonymous answer."
)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with errors described as what they are: problem+json.

    Operations whose token is optional declare no security requirement, and say in their
    description that a token is read when sent (`OPTIONAL_CREDENTIALS_NOTE`). The standard form,
    `security: [{}, OAuth2PasswordBearer]`, would be truer, but openapi-python-client (0.29.1)
    ignores the `{}` and makes its generated calls demand an authenticated client (its issue
    #1372); tests/test_generated_client.py type-checks an anonymous call to each.
    """
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for path_item in schema["paths"].values():
            for operation in path_item.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if status.isdigit() and int(status) >= 400 and "application/json" in content:
                        problem = content.setdefault(PROBLEM_MEDIA_TYPE, {})
                        problem["schema"] = {"$ref": "#/components/schemas/Problem"}
                        del content["application/json"]
        for context in iter_route_contexts(app.routes):
            route = context.original_route
            optional = isinstance(route, APIRoute) and _takes_an_optional_token(route.dependant)
            if optional and context.path_format in schema["paths"]:
                for method in context.methods or ():
                    operation = schema["paths"][context.path_format][method.lower()]
                    operation.pop("security", None)
                    description = operation.get("description", "")
                    operation["description"] = f"{description}\n\n{OPTIONAL_CREDENTIALS_NOTE}".strip()
        for unused in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(unused, None)
        app.openapi_schema = schema
    return app.openapi_schema
