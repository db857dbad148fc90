"""Issue 13, metrics: GET /metrics in the Prometheus format, off by default, right with several workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import TEST_SECRET, assert_problem, serving, upgrade
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import make_url

from blogapi.auth import security
from blogapi.config import Settings
from blogapi.db import Database
from blogapi.main import create_app

# The serve() helper of the fault tests (a directory of their own, not a package).
sys.path.insert(0, str(Path(__file__).parent / "faults"))
from fault_support import free_port, serve, server_env

TOKEN = "metrics-token-0123456789"
AUTHORIZED = {"Authorization": f"Bearer {TOKEN}"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(exposition: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def metered(settings: Settings, database: Database) -> AsyncIterator[httpx.AsyncClient]:
    limited = settings.model_copy(
        update={"metrics_token": SecretStr(TOKEN), "login_failures_per_account_and_address": 2}
    )
    async with serving(create_app(limited, database)) as client:
        yield client


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics", headers=AUTHORIZED)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


async def test_metrics_are_off_by_default(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/metrics"), 404)
    assert_problem(await client.get("/metrics", headers=AUTHORIZED), 404)


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", TOKEN])
async def test_metrics_on_the_main_port_need_the_token(
    metered: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await metered.get("/metrics", headers=headers)
    problem = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert "blogapi_" not in response.text
    assert problem["request_id"] == response.headers["x-request-id"]


def test_a_short_metrics_token_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        Settings(database_url="sqlite://", secret_key=TEST_SECRET, metrics_token="short", _env_file=None)


async def test_counts_after_a_known_sequence_of_requests(metered: httpx.AsyncClient, backend: str) -> None:
    for _ in range(3):
        assert (await metered.get("/api/v1/posts")).status_code == 200
    assert (await metered.head("/api/v1/posts")).status_code == 200
    assert (await metered.get("/api/v1/posts/999999")).status_code == 404
    assert (await metered.get("/no/such/path")).status_code == 404
    login = {"username": "nobody@example.com", "password": "wrong password"}
    statuses = [(await metered.post("/api/v1/auth/token", data=login)).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]
    assert (await metered.request("BREW", "/api/v1/posts")).status_code == 405

    samples = await scrape(metered)
    requests = "blogapi_http_requests_total"
    assert value(samples, requests, method="GET", route="/api/v1/posts", status="2xx") == 3
    assert value(samples, requests, method="HEAD", route="/api/v1/posts", status="2xx") == 1
    assert value(samples, requests, method="GET", route="/api/v1/posts/{post_id}", status="4xx") == 1
    assert value(samples, requests, method="GET", route="unmatched", status="4xx") == 1
    assert value(samples, requests, method="POST", route="/api/v1/auth/token", status="4xx") == 3
    assert value(samples, requests, method="OTHER", route="/api/v1/posts", status="4xx") == 1
    latency = "blogapi_http_request_duration_seconds"
    assert value(samples, f"{latency}_count", method="GET", route="/api/v1/posts", status="2xx") == 3
    assert (
        value(samples, f"{latency}_bucket", method="GET", route="/api/v1/posts", status="2xx", le="+Inf") == 3
    )
    assert value(samples, f"{latency}_sum", method="GET", route="/api/v1/posts", status="2xx") > 0
    assert value(samples, "blogapi_login_failures_total") == 2
    assert value(samples, "blogapi_throttled_requests_total", route="/api/v1/auth/token") == 1
    assert value(samples, "blogapi_http_requests_in_flight") == 1  # the scrape itself
    assert value(samples, "blogapi_db_pool_size") >= 1
    assert value(samples, "blogapi_db_pool_open") >= 1
    assert value(samples, "blogapi_db_pool_checked_out") == 0
    assert value(samples, "blogapi_db_pool_waiting") == 0
    assert value(samples, "blogapi_password_hashes_queued") == 0
    assert value(samples, "blogapi_password_hashes_running") == 0

    again = await scrape(metered)
    assert value(again, requests, method="GET", route="/metrics", status="2xx") == 1


async def test_503s_are_counted_by_cause(settings: Settings, database_url: str, backend: str) -> None:
    if backend == "sqlite":
        unreachable = "sqlite+aiosqlite:////nonexistent-blogapi-folder/x.db"
    else:
        unreachable = make_url(database_url).set(port=1).render_as_string(hide_password=False)
    app = create_app(
        settings.model_copy(update={"database_url": unreachable, "metrics_token": SecretStr(TOKEN)})
    )
    async with serving(app) as client:
        assert_problem(await client.get("/api/v1/posts"), 503)
        assert_problem(await client.get("/health/ready"), 503)
        samples = await scrape(client)
    assert value(samples, "blogapi_http_unavailable_total", cause="database_unavailable") == 1
    assert value(samples, "blogapi_http_unavailable_total", cause="other") == 1  # readiness
    assert (
        value(samples, "blogapi_http_requests_total", method="GET", route="/health/ready", status="5xx") == 1
    )


async def _scrape_until(client: httpx.AsyncClient, name: str, expected: float) -> Samples:
    for _ in range(500):
        samples = await scrape(client)
        if value(samples, name) == expected:
            return samples
        await asyncio.sleep(0.01)
    pytest.fail(f"{name} never reached {expected}")


async def test_hashes_running_and_queued_are_sampled_at_the_scrape(
    settings: Settings, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sign-ups with one hashing thread: one hash runs (held until released), one waits."""
    release = threading.Event()
    hash_password = security._password_hash.hash

    def held_hash(password: str | bytes, *, salt: bytes | None = None) -> str:
        release.wait(30)
        return hash_password(password, salt=salt)

    monkeypatch.setattr(security._password_hash, "hash", held_hash)
    app = create_app(
        settings.model_copy(update={"metrics_token": SecretStr(TOKEN), "hash_concurrency": 1}), database
    )
    async with serving(app) as client:
        sign_ups = [
            asyncio.create_task(
                client.post(
                    "/api/v1/users",
                    json={"name": "Hash", "email": f"hash{n}@example.com", "password": "x" * 12},
                )
            )
            for n in range(2)
        ]
        try:
            samples = await _scrape_until(client, "blogapi_password_hashes_queued", 1)
        finally:
            release.set()
        assert [(await sign_up).status_code for sign_up in sign_ups] == [201, 201]
        assert value(samples, "blogapi_password_hashes_running") == 1
        done = await scrape(client)
    assert value(done, "blogapi_password_hashes_running") == 0
    assert value(done, "blogapi_password_hashes_queued") == 0


@pytest.mark.backends("postgresql", "mariadb")
async def test_checkouts_waiting_for_the_pool_are_sampled_at_the_scrape(settings: Settings) -> None:
    """A pool of one, held by the test: a request waits for it, and the scrape says so."""
    small = settings.model_copy(update={"metrics_token": SecretStr(TOKEN), "pool_size": 1, "max_overflow": 0})
    database = Database.from_settings(small)
    try:
        async with serving(create_app(small, database)) as client:
            async with database.engine.connect() as held:
                await held.exec_driver_sql("SELECT 1")
                waiting = asyncio.create_task(client.get("/api/v1/posts"))
                samples = await _scrape_until(client, "blogapi_db_pool_waiting", 1)
            assert (await waiting).status_code == 200
            assert value(samples, "blogapi_db_pool_checked_out") == 1
            assert value(samples, "blogapi_db_pool_size") == 1
            after = await scrape(client)
        assert value(after, "blogapi_db_pool_waiting") == 0
        assert value(after, "blogapi_db_pool_checked_out") == 0
    finally:
        await database.dispose()


# --- several workers ----------------------------------------------------------------------------


def _requests_by_pid(directory: Path) -> Counter[int]:
    """Requests each worker counted, read from its own file."""
    counts: Counter[int] = Counter()
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for key, count, _timestamp, _position in MmapedDict.read_all_values_from_file(str(path)):  # type: ignore[no-untyped-call]
            name, _sample, labels, _help = json.loads(key)
            if name == "blogapi_http_requests" and labels.get("route") == "/health/live":
                counts[pid] += int(count)
    return counts


def _live_gauge_pids(directory: Path) -> set[int]:
    return {int(path.stem.rsplit("_", 1)[1]) for path in directory.glob("gauge_livesum_*.db")}


async def _gone(pid: int) -> None:
    """Wait (bounded) until a killed process has been reaped by its parent."""
    for _ in range(300):
        if not os.path.exists(f"/proc/{pid}"):  # noqa: ASYNC240  (a stat, no I/O to wait on)
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"process {pid} was never reaped")


@pytest.mark.backends("sqlite")
async def test_two_workers_count_together_and_a_killed_workers_gauges_are_dropped(
    scratch_database_url: str, tmp_path: Path
) -> None:
    """`blogapi serve --workers 2`: the scrape sums both workers' files (from either port),
    the directory starts empty, and a worker killed with SIGKILL keeps its counts but
    leaves the live gauges at the next scrape."""
    await asyncio.to_thread(upgrade, scratch_database_url)
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"stale, from an earlier run")
    port, metrics_port = free_port(), free_port()
    env = server_env(scratch_database_url, metrics_token=TOKEN, metrics_port=metrics_port)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    argv = [str(Path(sys.executable).parent / "blogapi"), "serve", "--port", str(port), "--workers", "2"]
    async with serve(argv, env, tmp_path, port, ready_seconds=180) as server:
        assert not (directory / "counter_999999.db").exists()
        sent = 0
        # A new connection per request: the kernel hands them to either worker, until
        # both have answered some (bounded).
        for _ in range(60):
            for _ in range(5):
                async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                    assert (await client.get("/health/live")).status_code == 200
                sent += 1
            if len(_requests_by_pid(directory)) == 2:
                break
        by_pid = _requests_by_pid(directory)
        assert len(by_pid) == 2, by_pid
        assert sum(by_pid.values()) == sent

        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            main = parse((await client.get("/metrics", headers=AUTHORIZED)).text)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}", timeout=30) as client:
            separate = parse((await client.get("/metrics")).text)
        live = "blogapi_http_requests_total"
        labels = {"method": "GET", "route": "/health/live", "status": "2xx"}
        assert value(main, live, **labels) == sent
        assert value(separate, live, **labels) == sent
        assert value(separate, "blogapi_db_pool_size") == value(main, "blogapi_db_pool_size") > 0

        killed = max(by_pid, key=lambda pid: by_pid[pid])
        assert killed in _live_gauge_pids(directory)
        os.kill(killed, signal.SIGKILL)
        await _gone(killed)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}", timeout=30) as client:
            after = parse((await client.get("/metrics")).text)
        assert killed not in _live_gauge_pids(directory)
        assert value(after, live, **labels) == sent  # the dead worker's requests still count
        assert value(after, "blogapi_http_requests_in_flight") == 0
        output = server.output()
    assert f"Child process [{killed}] died" in output
