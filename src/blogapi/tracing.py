"""OpenTelemetry traces: a span per request, per SQL statement and per password hash.

Off unless the standard variables ask for it (`Settings.tracing_exporter`: OTEL_TRACES_EXPORTER
=otlp or console, or OTEL_EXPORTER_OTLP_ENDPOINT set). Off, this module and the SDK are never
imported, and FastAPI's own telemetry is switched off, so that it does not even look for a
tracer provider on each request (main.py).

On:
- the request's span is FastAPI's native one (`FastAPI(telemetry=...)`: named after the
  method and the route template, with `http.route`), given the request id
  (`blogapi.request_id`) by `observe.RequestObserver` through `tag_request`;
- each SQL statement is a client span (opentelemetry-instrumentation-sqlalchemy's
  `EngineTracer` on the engines' `sync_engine`): the statement's text, never its parameters.
  `EngineTracer` is used directly, per engine: the instrumentor's `instrument()` patches
  `create_engine` and `Engine.connect` process-wide, once, and refuses SQLAlchemy 2.1 (its
  `instruments` extra says <2.1, though the engine events it listens to are unchanged);
- each password hash or verification is a span (`password.hash`, `password.verify`) around
  the Argon2 call, in its worker thread (anyio copies the context there);
- every span started while a request runs carries its id (`RequestIdSpanProcessor`).
Spans go through a `BatchSpanProcessor` to the OTLP/HTTP exporter, which reads its
endpoint, headers and timeouts from the OTEL_EXPORTER_OTLP_* variables; OTEL_SERVICE_NAME
(default `blogapi`) and OTEL_RESOURCE_ATTRIBUTES describe the service.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi.telemetry import TelemetryConfig
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

from blogapi import __version__, logs
from blogapi.auth import security
from blogapi.config import Settings
from blogapi.db import Database

REQUEST_ID_ATTRIBUTE = "blogapi.request_id"
DEFAULT_SERVICE_NAME = "blogapi"


class RequestIdSpanProcessor(SpanProcessor):
    """Give every span started while a request runs that request's id."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        request_id = logs.current_request_id()
        if request_id is not None:
            span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)

    def on_end(self, span: ReadableSpan) -> None:
        pass


class _TracedHasher:
    """The password hasher of `auth.security`, with a span around each hash and verification."""

    def __init__(self, hasher: Any, tracer: trace.Tracer) -> None:
        self.hasher = hasher
        self.tracer = tracer

    def hash(self, password: str, **options: Any) -> str:
        with self.tracer.start_as_current_span("password.hash"):
            result: str = self.hasher.hash(password, **options)
            return result

    def verify(self, password: str, password_hash: str, **options: Any) -> bool:
        with self.tracer.start_as_current_span("password.verify"):
            result: bool = self.hasher.verify(password, password_hash, **options)
            return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hasher, name)


def _exporter(settings: Settings) -> SpanExporter:
    if settings.tracing_exporter == "console":
        return ConsoleSpanExporter()
    # Imported only here: it loads protobuf and requests.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


class Tracing:
    """The tracer provider of one app, and the hooks that feed it."""

    def __init__(self, settings: Settings, exporter: SpanExporter | None = None) -> None:
        """`exporter`: spans go to it as each ends (tests); else batched to the configured exporter."""
        resource = Resource.create(
            {
                "service.name": os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME,
                "service.version": __version__,
            }
        )
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(RequestIdSpanProcessor())
        if exporter is None:
            self.provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
        else:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("blogapi", __version__)

    def fastapi_telemetry(self) -> TelemetryConfig:
        """FastAPI's native telemetry: request spans only, to this provider (metrics are Prometheus')."""
        return {
            "tracer_provider": self.provider,
            "tracing": True,
            "metrics": False,
            "logs": False,  # it would record exception messages, which may quote input
            "operation_spans": False,
            "auto_configure": False,
        }

    def start(self, database: Database) -> None:
        """For the lifespan: trace the engines' statements and the password hashes."""
        tracer = trace.get_tracer(
            "opentelemetry.instrumentation.sqlalchemy", __version__, tracer_provider=self.provider
        )
        # Pool gauges are Prometheus' (metrics.py): the tracer's connection counter goes nowhere.
        connections = NoOpMeterProvider().get_meter("blogapi").create_up_down_counter("unused")
        reads = database.read_engine
        every = (database.engine, reads.primary, *(replica.engine for replica in reads.replicas))
        engines = {id(engine.sync_engine): engine for engine in every}
        for engine in engines.values():
            EngineTracer(tracer, engine.sync_engine, connections)  # type: ignore[no-untyped-call]
        current = security._password_hash
        inner = current.hasher if isinstance(current, _TracedHasher) else current
        security._password_hash = _TracedHasher(inner, self.tracer)  # type: ignore[assignment]

    def stop(self) -> None:
        """Send the spans still batched, and stop tracing hashes."""
        current = security._password_hash
        if isinstance(current, _TracedHasher) and current.tracer is self.tracer:
            security._password_hash = current.hasher
        self.provider.shutdown()


def tag_request(request_id: str) -> None:
    """Give the request's span (FastAPI's, current while the request runs) its id."""
    trace.get_current_span().set_attribute(REQUEST_ID_ATTRIBUTE, request_id)
