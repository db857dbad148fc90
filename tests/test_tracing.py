"""OpenTelemetry traces: the spans of one request, and nothing of it when tracing is off."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PASSWORD, TEST_SECRET, serving, upgrade
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from blogapi.auth import security
from blogapi.config import Settings
from blogapi.db import Database
from blogapi.main import create_app
from blogapi.tracing import REQUEST_ID_ATTRIBUTE, _TracedHasher


def _of_request(spans: tuple[ReadableSpan, ...], request_id: str) -> list[ReadableSpan]:
    return [span for span in spans if (span.attributes or {}).get(REQUEST_ID_ATTRIBUTE) == request_id]


def _server_span(spans: list[ReadableSpan]) -> ReadableSpan:
    [server] = [span for span in spans if span.kind is SpanKind.SERVER]
    return server


def _statement(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    return str(attributes.get("db.statement") or attributes.get("db.query.text") or "")


async def test_one_request_gives_a_server_span_with_its_route_and_id_and_a_child_span_per_sql_statement(
    settings: Settings, database: Database
) -> None:
    exporter = InMemorySpanExporter()
    async with serving(create_app(settings, database, span_exporter=exporter)) as client:
        signup = await client.post(
            "/api/v1/users", json={"name": "Traced", "email": "traced@example.com", "password": PASSWORD}
        )
        assert signup.status_code == 201, signup.text
        user_id = signup.json()["id"]
        exporter.clear()
        response = await client.get(f"/api/v1/users/{user_id}", headers={"X-Request-ID": "trace-me-1"})
        assert response.status_code == 200, response.text

    spans = _of_request(exporter.get_finished_spans(), "trace-me-1")
    server = _server_span(spans)
    assert server.name == "GET /api/v1/users/{user_id}"
    assert (server.attributes or {})["http.route"] == "/api/v1/users/{user_id}"
    statements = [span for span in spans if span.kind is SpanKind.CLIENT]
    assert statements, [span.name for span in spans]
    assert any("SELECT" in _statement(span) for span in statements), [_statement(s) for s in statements]
    for span in statements:
        assert span.context is not None
        assert server.context is not None
        assert span.context.trace_id == server.context.trace_id
        assert span.parent is not None
        assert span.parent.span_id == server.context.span_id


async def test_a_login_traces_its_password_verification_inside_the_request(
    settings: Settings, database: Database
) -> None:
    exporter = InMemorySpanExporter()
    app = create_app(settings, database, span_exporter=exporter)
    async with serving(app) as client:
        signup = await client.post(
            "/api/v1/users",
            json={"name": "Traced", "email": "login@example.com", "password": PASSWORD},
            headers={"X-Request-ID": "trace-signup"},
        )
        assert signup.status_code == 201, signup.text
        login = await client.post(
            "/api/v1/auth/token",
            data={"username": "login@example.com", "password": PASSWORD},
            headers={"X-Request-ID": "trace-login"},
        )
        assert login.status_code == 200, login.text
        assert isinstance(security._password_hash, _TracedHasher)
    # Tracing hashes ends with the app.
    assert not isinstance(security._password_hash, _TracedHasher)

    finished = exporter.get_finished_spans()
    signup_spans = _of_request(finished, "trace-signup")
    # (A transaction retried after a transient conflict hashes again: at least one.)
    assert {span.name for span in signup_spans if span.name.startswith("password.")} == {"password.hash"}
    login_spans = _of_request(finished, "trace-login")
    server = _server_span(login_spans)
    assert server.name == "POST /api/v1/auth/token"
    [verify] = [span for span in login_spans if span.name == "password.verify"]
    assert verify.context is not None
    assert server.context is not None
    assert verify.context.trace_id == server.context.trace_id
    assert any(span.kind is SpanKind.CLIENT for span in login_spans)
    # Statements are recorded without their parameters: neither the password nor the email is in a span.
    recorded = json.dumps([dict(span.attributes or {}) for span in finished], default=str)
    assert "INSERT" in recorded
    assert PASSWORD not in recorded
    assert "login@example.com" not in recorded


# What tracing costs when off: nothing imported, FastAPI's own telemetry off.

_OFF_PROBE = """
import asyncio, json, sys
import httpx
from asgi_lifespan import LifespanManager
from blogapi.main import create_app

async def main():
    app = create_app()
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            statuses = [(await client.get(path)).status_code for path in ("/api/v1/posts", "/health/live")]
    print(json.dumps({
        "statuses": statuses,
        "fastapi_telemetry": app._native_telemetry.enabled(),
        "modules": sorted(name for name in sys.modules if name.startswith(("opentelemetry", "blogapi"))),
    }))

asyncio.run(main())
"""


def _probe(tmp_path: Path, **env: str) -> dict[str, object]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'off.db'}"
    upgrade(url)
    environment = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    environment |= {"DATABASE_URL": url, "SECRET_KEY": TEST_SECRET, "ENVIRONMENT": "test", **env}
    done = subprocess.run(
        [sys.executable, "-c", _OFF_PROBE],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


LOADED_ONLY_FOR_TRACING = (
    "blogapi.tracing",
    "opentelemetry.sdk",
    "opentelemetry.instrumentation",
    "opentelemetry.exporter",
)


async def test_with_tracing_off_neither_the_sdk_nor_the_tracing_module_is_imported_and_fastapi_traces_nothing(
    tmp_path: Path,
) -> None:
    """(FastAPI itself imports the OpenTelemetry API, which it depends on: only that is loaded.)"""
    result = await asyncio.to_thread(_probe, tmp_path)
    assert result["statuses"] == [200, 200]
    assert result["fastapi_telemetry"] is False
    modules = result["modules"]
    assert isinstance(modules, list)
    assert "blogapi.main" in modules  # the probe saw the app's imports
    assert [name for name in modules if name.startswith(LOADED_ONLY_FOR_TRACING)] == []


async def test_otel_traces_exporter_turns_tracing_on(tmp_path: Path) -> None:
    result = await asyncio.to_thread(_probe, tmp_path, OTEL_TRACES_EXPORTER="console")
    assert result["statuses"] == [200, 200]
    assert result["fastapi_telemetry"] is True
    modules = result["modules"]
    assert isinstance(modules, list)
    assert "blogapi.tracing" in modules


@pytest.mark.parametrize(
    ("env", "exporter"),
    [
        ({}, None),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "Console"}, "console"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, None),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, None),
    ],
)
def test_the_standard_otel_variables_decide_whether_traces_are_exported(
    env: dict[str, str], exporter: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in os.environ:
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None).tracing_exporter == exporter


async def test_a_request_continues_the_trace_its_client_sent_in_traceparent(
    settings: Settings, database: Database
) -> None:
    exporter = InMemorySpanExporter()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = "00f067aa0ba902b7"
    async with serving(create_app(settings, database, span_exporter=exporter)) as client:
        response = await client.get(
            "/api/v1/posts",
            headers={"X-Request-ID": "trace-continued", "traceparent": f"00-{trace_id}-{parent}-01"},
        )
        assert response.status_code == 200, response.text
    server = _server_span(_of_request(exporter.get_finished_spans(), "trace-continued"))
    assert server.context is not None
    assert format(server.context.trace_id, "032x") == trace_id
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == parent
