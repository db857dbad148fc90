"""Prometheus metrics, with prometheus-client directly (the wrapper libraries measured 25-35% slower).

Off unless METRICS_TOKEN or METRICS_PORT is set; then `observe.RequestObserver` records
each request here, and GET /metrics answers on the main port (METRICS_TOKEN) and/or on a
port of its own (METRICS_PORT, served by `blogapi serve`).

With several workers (`blogapi serve --workers N`) every process writes its numbers to
files in PROMETHEUS_MULTIPROC_DIR, which `blogapi serve` prepares empty, and a scrape
reads them all: counters and histograms are sums over every worker that ever ran,
gauges over the workers alive. A worker that stopped is marked dead (its gauges
dropped) when it shuts down, or at the next scrape if it was killed.

The gauges of the database pool and of the password hashes are sampled once a second in
each worker (and at each scrape, by the worker that answers it): no cost per request.
"""

from __future__ import annotations

import asyncio
import glob
import hmac
import os
import re
from collections.abc import Iterable
from typing import Any

import anyio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
    start_http_server,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from sqlalchemy.pool import QueuePool
from starlette.types import Receive, Scope, Send

from blogapi.auth import security
from blogapi.config import Settings
from blogapi.db import Database
from blogapi.errors import ProblemType, problem_response

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_SECONDS = 1.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Any other method is counted as OTHER: a client may send any token as a method, and
# each distinct label value is a time series kept for ever.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
_STATUS_CLASSES = {number: f"{number}xx" for number in range(1, 6)}
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db$")


def multiprocess_directory() -> str | None:
    return os.environ.get(MULTIPROCESS_ENV) or None


class _LiveMultiProcessCollector(multiprocess.MultiProcessCollector):
    """prometheus-client's collector over every worker's files, after dropping the gauges
    of workers that died without shutting down (kill -9, out of memory)."""

    def collect(self) -> Iterable[Metric]:
        mark_dead_processes(self._path)
        return super().collect()  # type: ignore[no-untyped-call,no-any-return]


def mark_dead_processes(directory: str) -> list[int]:
    """Mark dead every process that left live gauges in `directory` and no longer runs."""
    dead = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        found = _LIVE_GAUGE_FILE.search(os.path.basename(path))
        if found is None:
            continue
        pid = int(found.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.add(pid)
        except PermissionError:
            pass  # alive, someone else's
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    return sorted(dead)


def exposition_registry() -> CollectorRegistry:
    """A registry that reads every worker's files (multiprocess mode only)."""
    directory = multiprocess_directory()
    assert directory is not None, f"{MULTIPROCESS_ENV} is not set"
    registry = CollectorRegistry()
    _LiveMultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


class Metrics:
    """The metrics of one app, in its own registry (or, with several workers, in the shared files)."""

    def __init__(self, settings: Settings) -> None:
        self.token = settings.metrics_token.get_secret_value().encode() if settings.metrics_token else None
        self.hash_concurrency = settings.hash_concurrency
        self.multiprocess = multiprocess_directory() is not None
        # A `_created` series per counter and histogram doubles the scrape for nothing
        # Prometheus uses (and multiprocess mode has none).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        # In multiprocess mode values go to the files, whatever the registry; the
        # exposition reads them back through one.
        own = None if self.multiprocess else CollectorRegistry()
        self.registry = exposition_registry() if self.multiprocess else own
        labels = ("method", "route", "status")
        self.requests = Counter(
            "blogapi_http_requests", "HTTP requests answered, by status class.", labels, registry=own
        )
        self.latency = Histogram(
            "blogapi_http_request_duration_seconds",
            "Time from a request's arrival to its response's last byte.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.in_flight = Gauge(
            "blogapi_http_requests_in_flight",
            "Requests being handled.",
            multiprocess_mode="livesum",
            registry=own,
        )
        self.unavailable = Counter(
            "blogapi_http_unavailable",
            "503 responses, by cause: pool_exhausted, statement_timeout, transient_conflict,"
            " database_connection_lost, database_unavailable, shutting_down, other.",
            ("cause",),
            registry=own,
        )
        self.login_failures = Counter(
            "blogapi_login_failures",
            "Logins refused for a wrong email or password (not counting those throttled).",
            registry=own,
        )
        self.throttled = Counter(
            "blogapi_throttled_requests",
            "Requests refused with 429 (too many failed logins or sign-ups), by route.",
            ("route",),
            registry=own,
        )

        def gauge(name: str, documentation: str) -> Gauge:
            return Gauge(name, documentation, multiprocess_mode="livesum", registry=own)

        self.pool_size = gauge("blogapi_db_pool_size", "Connections the database pool may hold.")
        self.pool_open = gauge("blogapi_db_pool_open", "Connections the database pool holds open.")
        self.pool_checked_out = gauge("blogapi_db_pool_checked_out", "Connections in use by requests.")
        self.pool_waiting = gauge("blogapi_db_pool_waiting", "Requests waiting for a pooled connection.")
        self.hashes_running = gauge("blogapi_password_hashes_running", "Password hashes being computed.")
        self.hashes_queued = gauge(
            "blogapi_password_hashes_queued", "Password hashes waiting for a hashing thread."
        )
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float, state: dict[str, Any]) -> None:
        """Count one answered request."""
        status_class = _STATUS_CLASSES.get(status // 100, "other")
        key = (method, route, status_class)
        series = self._series.get(key)
        if series is None:
            label = method if method in METHODS else "OTHER"
            series = (
                self.requests.labels(label, route, status_class),
                self.latency.labels(label, route, status_class),
            )
            self._series[key] = series
        series[0].inc()
        series[1].observe(seconds)
        if status == 503:
            self.unavailable.labels(state.get("unavailable_cause", "other")).inc()
        elif status == 429:
            self.throttled.labels(route).inc()
        elif status == 401 and state.get("problem_type") is ProblemType.INVALID_CREDENTIALS:
            self.login_failures.inc()

    def sample(self, database: Database | None) -> None:
        """Read the gauges that are states rather than events: the pool, the hashing queue."""
        running, queued = security.hashing_statistics(self.hash_concurrency)
        self.hashes_running.set(running)
        self.hashes_queued.set(queued)
        if database is None:
            return
        pool = database.engine.pool
        if isinstance(pool, QueuePool):
            self.pool_size.set(pool.size() + max(pool._max_overflow, 0))
            self.pool_open.set(pool.checkedin() + pool.checkedout())
            self.pool_checked_out.set(pool.checkedout())
            waiting = getattr(pool._pool, "waiting", None)
            self.pool_waiting.set(waiting() if callable(waiting) else 0)

    async def sample_forever(self, database: Database) -> None:
        while True:
            self.sample(database)
            await asyncio.sleep(SAMPLE_SECONDS)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The scrape, in the format the scraper asks for (Prometheus text, or OpenMetrics)."""
        assert self.registry is not None
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def authorized(self, scope: Scope) -> bool:
        """Whether the request carries `Authorization: Bearer <METRICS_TOKEN>` (compared in constant time)."""
        if self.token is None:
            return False
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)
        return False

    async def endpoint(self, scope: Scope, receive: Receive, send: Send, database: Database | None) -> None:
        """GET /metrics on the main port."""
        if not self.authorized(scope):
            response = problem_response(
                401, "GET /metrics needs the metrics token", headers={"WWW-Authenticate": "Bearer"}
            )
            await response(scope, receive, send)
            return
        self.sample(database)
        accept = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"accept"), "")
        # Reading the workers' files is blocking file I/O: off the event loop.
        body, content_type = await anyio.to_thread.run_sync(self.exposition, accept)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    def stopped(self) -> None:
        """This worker is shutting down: its live gauges leave the sums."""
        directory = multiprocess_directory()
        if directory is not None:
            multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


def serve_port(settings: Settings) -> None:
    """GET /metrics on METRICS_HOST:METRICS_PORT, from a thread of `blogapi serve`'s own process."""
    assert settings.metrics_port is not None
    start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=exposition_registry())
