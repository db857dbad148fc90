"""What logs and metrics cost: the same build with JSON logs and Prometheus metrics on, and
with both off, measured side by side in one run.

Issue 13 asks that logging in JSON (`LOG_FORMAT=json`, the access line of every request)
and metrics (`METRICS_TOKEN`, prometheus-client in multiprocess mode as `blogapi serve`
sets it up) cost at most 10% against the same build with both off (`LOG_LEVEL=WARNING`: no
access line; no metrics token). Each configuration runs as `blogapi serve` (one worker, as
shipped) with its log going to a file; the two are started in turn, `--rounds` times each,
alternating, so that a change in the shared machine's load hits both alike. Each round
sends `--requests` requests per endpoint over `--connections` connections and reads the
server's CPU time (user + system, from /proc): CPU per request is the figure compared,
requests per second is shown beside it. The best round of each configuration is kept.

    .venv/bin/python bench/observability.py            # PostgreSQL, blogapi_bench_observability
    .venv/bin/python bench/observability.py --quick    # fewer requests, 2 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

PASSWORD = "bench password 123"  # noqa: S105  (a throwaway account's)
METRICS_TOKEN = secrets.token_urlsafe(24)
DEFAULT_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+asyncpg://root@127.0.0.1:5432/blogapi_bench_observability"
)
CONFIGURATIONS = {
    "logs and metrics off": {"LOG_LEVEL": "WARNING"},
    "JSON logs and metrics on": {"LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "METRICS_TOKEN": METRICS_TOKEN},
}
ENDPOINTS = ("GET /api/v1/posts?limit=20", "GET /api/v1/users/me")
POSTS = 40
TARGET = 1.10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Round:
    cpu_us: dict[str, float]
    rate: dict[str, float]


async def prepare(base_url: str) -> dict[str, str]:
    """A user with a few posts; their Authorization header."""
    email = f"bench-{secrets.token_hex(6)}@example.com"
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        created = await client.post(
            "/api/v1/users", json={"name": "Bench", "email": email, "password": PASSWORD}
        )
        assert created.status_code == 201, created.text
        login = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        listed = await client.get("/api/v1/posts", params={"limit": POSTS})
        for number in range(POSTS - len(listed.json()["items"])):
            body = {"title": f"bench post {number}", "body": "observability", "tags": ["bench"]}
            response = await client.post("/api/v1/posts", json=body, headers=headers)
            assert response.status_code == 201, response.text
    return headers


async def measure(base_url: str, pid: int, headers: dict[str, str], requests: int, connections: int) -> Round:
    result = Round({}, {})
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for endpoint in ENDPOINTS:
            method, _, target = endpoint.partition(" ")

            async def worker(count: int, target: str = target, method: str = method) -> None:
                for _ in range(count):
                    response = await client.request(method, target, headers=headers)
                    assert response.status_code == 200, response.text

            await asyncio.gather(*(worker(30) for _ in range(connections)))  # warm-up
            per_connection = requests // connections
            cpu_before, started = cpu_seconds(pid), time.perf_counter()
            await asyncio.gather(*(worker(per_connection) for _ in range(connections)))
            elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
            done = per_connection * connections
            result.cpu_us[endpoint] = cpu / done * 1e6
            result.rate[endpoint] = done / elapsed
    return result


def run_round(env: dict[str, str], log: Path, requests: int, connections: int) -> Round:
    port = free_port()
    blogapi = [sys.executable, "-c", "from blogapi.cli import main; main()"]
    with log.open("ab") as output:
        server = subprocess.Popen(  # noqa: S603  (our own interpreter and arguments)
            [*blogapi, "serve", "--port", str(port)],
            env=env,
            cwd=tempfile.gettempdir(),
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{base_url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        else:
            raise SystemExit(f"the server never became ready; see {log}")
        headers = asyncio.run(prepare(base_url))
        # The server process itself: uvicorn runs in it with one worker.
        return asyncio.run(measure(base_url, server.pid, headers, requests, connections))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--requests", type=int, default=3000, help="per endpoint and round")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1000 requests, 2 rounds")
    options = parser.parse_args()
    if options.quick:
        options.requests, options.rounds = 1000, 2
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LOG_", "METRICS_", "OTEL_", "PROMETHEUS_"))
    }
    base |= {
        "DATABASE_URL": options.database_url,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "ENVIRONMENT": "production",
        "SIGNUPS_PER_ADDRESS": "1000000",
    }
    blogapi = [sys.executable, "-c", "from blogapi.cli import main; main()"]
    subprocess.run([*blogapi, "db", "upgrade"], env=base, check=True, capture_output=True, timeout=300)  # noqa: S603
    rounds: dict[str, list[Round]] = {name: [] for name in CONFIGURATIONS}
    with tempfile.TemporaryDirectory(prefix="blogapi-bench-observability-") as directory:
        for number in range(options.rounds):
            for name, settings in CONFIGURATIONS.items():
                log = Path(directory) / f"{name.replace(' ', '-')}.log"
                rounds[name].append(run_round(base | settings, log, options.requests, options.connections))
                print(f"round {number + 1}/{options.rounds}: {name} done", file=sys.stderr)
        lines = {
            name: (Path(directory) / f"{name.replace(' ', '-')}.log").read_text().count("\n")
            for name in rounds
        }
    off, on = CONFIGURATIONS
    print(
        f"\nlogs and metrics: one uvicorn worker, {options.connections} connections,"
        f" best of {options.rounds} rounds"
    )
    print(f"| endpoint | {off}: µs CPU/req (req/s) | {on}: µs CPU/req (req/s) | CPU ratio |")
    print("|---|---|---|---|")
    worst = 0.0
    for endpoint in ENDPOINTS:
        cpu = {name: min(result.cpu_us[endpoint] for result in rounds[name]) for name in rounds}
        rate = {name: max(result.rate[endpoint] for result in rounds[name]) for name in rounds}
        ratio = cpu[on] / cpu[off]
        worst = max(worst, ratio)
        print(
            f"| {endpoint} | {cpu[off]:.0f} ({rate[off]:.0f})"
            f" | {cpu[on]:.0f} ({rate[on]:.0f}) | {ratio:.3f} |"
        )
    print(f"\nlog lines written: {lines}")
    verdict = "within" if worst <= TARGET else "OVER"
    print(f"worst CPU ratio {worst:.3f}: {verdict} the {TARGET:.2f} target")


if __name__ == "__main__":
    main()
