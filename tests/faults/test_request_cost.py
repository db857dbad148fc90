"""One request cannot stall a worker: a 422's cost grows linearly with the body (issue 10, point 2).

A body of unknown keys is the cheapest way to make many validation errors (a few bytes
each; a list of wrong items stops at its length limit). Reporting them used to be
quadratic: 6,000 keys kept a worker busy for 15 s. The server runs for real (uvicorn, one
process) at the production body limit, so /health/live shares the event loop with the
hostile request, as it would in production.

This is the one test that compares times, as the issue asks, and only within itself: each
bound is a ratio to a request measured in the same run, against the same server, with the
minimum of a few runs taken as each request's cost (the minimum is what the code costs;
the rest is other load on the machine).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import pytest
from fault_support import free_port, serve, server_env

from blogapi.config import Settings

SIGN_UP = "/api/v1/users"
JSON = {"Content-Type": "application/json"}
SIZE_RATIO = 16
# Linear cost makes the big request SIZE_RATIO times the small one (less, as fixed costs
# weigh less); quadratic would make it SIZE_RATIO**2 times. The slack absorbs the noise
# of a loaded machine while staying far from the quadratic.
SLACK = 4


def unknown_keys(size: int) -> bytes:
    """A JSON object of distinct unknown keys, as close to `size` bytes as fits."""
    key_size = len('"k100000":0,')
    keys = size // key_size
    body = json.dumps({f"k{number}": 0 for number in range(keys)}, separators=(",", ":")).encode()
    assert len(body) <= size
    return body


async def cost(client: httpx.AsyncClient, body: bytes, runs: int) -> float:
    """The fastest of `runs` 422s for `body`, in seconds."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = await client.post(SIGN_UP, content=body, headers=JSON)
        times.append(time.perf_counter() - started)
        assert response.status_code == 422, response.text[:500]
    return min(times)


async def probe_health(client: httpx.AsyncClient, until: asyncio.Event) -> list[tuple[float, float]]:
    """/health/live again and again until `until` is set; each probe's (start, end)."""
    probes = []
    while not until.is_set():
        started = time.perf_counter()
        response = await client.get("/health/live")
        probes.append((started, time.perf_counter()))
        assert response.status_code == 200
    return probes


# A 422 is decided before any query: the backend changes nothing here but the run time.
@pytest.mark.backends("sqlite")
async def test_a_body_of_unknown_keys_at_the_size_limit_costs_linear_time_and_health_stays_answered(
    database_url: str, tmp_path: Path
) -> None:
    limit = Settings.model_fields["max_body_bytes"].default
    big = unknown_keys(limit)
    small = unknown_keys(limit // SIZE_RATIO)
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "blogapi.asgi:app", "--port", str(port), "--no-access-log"]
    env = server_env(database_url, max_body_bytes=limit)
    async with serve(argv, env, tmp_path, port) as server:
        # Two connections: health is never queued behind the big request in the client.
        timeout = httpx.Timeout(120)
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=timeout) as client,
            httpx.AsyncClient(base_url=server.base_url, timeout=timeout) as health,
        ):
            small_cost = await cost(client, small, runs=3)
            bound = SLACK * SIZE_RATIO * small_cost

            done = asyncio.Event()
            probing = asyncio.create_task(probe_health(health, done))
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            response = await client.post(SIGN_UP, content=big, headers=JSON)
            ended = time.perf_counter()
            done.set()
            probes = await probing

            big_cost = min(ended - started, await cost(client, big, runs=1))

    assert response.status_code == 422
    problem = response.json()
    assert len(problem["errors"]) == 100
    assert problem["errors_omitted"] > 50_000
    assert big_cost <= bound, f"{len(big)} bytes took {big_cost:.3f} s; {len(small)} took {small_cost:.4f} s"
    during = [end - start for start, end in probes if start < ended and end > started]
    assert during, "no health probe overlapped the big request"
    assert max(during) <= bound, f"/health/live waited {max(during):.3f} s (bound {bound:.3f} s)"
