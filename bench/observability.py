"""What logs and metrics cost: the same build with JSON logs and Prometheus metrics on, and
with both off, measured side by side in one run.

Issue 13 asks that logging in JSON (`LOG_FORMAT=json`, the access line of every request)
and metrics (`METRICS_TOKEN`, prometheus-client in multiprocess mode as `blogapi serve`
sets it up) cost at most 10% against the same build with both off (`LOG_LEVEL=WARNING`: no
access line; no metrics token). Both configurations run at once as `blogapi serve` (one
worker each, as shipped), each logging to a file; wrk loads one, then the other, in short
bursts whose order alternates, so that the shared machine's changing load falls on both
alike. The server's CPU time (user + system, from /proc) over its bursts, divided by the
requests answered, is the figure compared; requests per second are shown beside it.

    .venv/bin/python bench/observability.py            # PostgreSQL, blogapi_bench_observability
    .venv/bin/python bench/observability.py --quick    # 4 bursts of 1 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
class Tally:
    """One server's CPU seconds, requests and wrk seconds on one endpoint, over its bursts."""

    cpu: float = 0.0
    requests: int = 0
    seconds: float = 0.0
    bursts: list[float] = field(default_factory=list)
    """CPU microseconds per request of each burst."""


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


def wrk(url: str, headers: dict[str, str], seconds: float, connections: int) -> int:
    """Requests wrk completed in `seconds`; every answer must be a 2xx."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run([*argv, url], capture_output=True, text=True, check=True, timeout=seconds + 60)  # noqa: S603
    if "Non-2xx" in done.stdout or "Socket errors" in done.stdout:
        raise SystemExit(f"wrk met errors on {url}:\n{done.stdout}")
    found = re.search(r"(\d+) requests in", done.stdout)
    if found is None:
        raise SystemExit(f"no request count in wrk's output:\n{done.stdout}")
    return int(found.group(1))


@contextlib.contextmanager
def running(env: dict[str, str], log: Path) -> Iterator[tuple[str, int]]:
    """`blogapi serve` (one worker) until the block ends; its base URL and pid once ready."""
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
        yield base_url, server.pid  # uvicorn runs in this process itself with one worker
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--seconds", type=float, default=2, help="of each burst of wrk")
    parser.add_argument("--bursts", type=int, default=12, help="per endpoint and configuration")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="4 bursts of 1 s")
    options = parser.parse_args()
    if options.quick:
        options.seconds, options.bursts = 1, 4
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
    tallies = {name: {endpoint: Tally() for endpoint in ENDPOINTS} for name in CONFIGURATIONS}
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="blogapi-bench-obs-")))
        servers = {
            name: stack.enter_context(running(base | settings, directory / f"{number}.log"))
            for number, (name, settings) in enumerate(CONFIGURATIONS.items())
        }
        first_url = next(iter(servers.values()))[0]
        headers = asyncio.run(prepare(first_url))  # one account, one key: the token serves both
        for endpoint in ENDPOINTS:
            path = endpoint.partition(" ")[2]
            for base_url, _ in servers.values():
                wrk(base_url + path, headers, 2, options.connections)  # warm-up
            for burst in range(options.bursts):
                # Each burst of one beside one of the other, the order alternating.
                order = list(servers.items()) if burst % 2 == 0 else list(servers.items())[::-1]
                for name, (base_url, pid) in order:
                    cpu_before, started = cpu_seconds(pid), time.perf_counter()
                    done = wrk(base_url + path, headers, options.seconds, options.connections)
                    elapsed, spent = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
                    tally = tallies[name][endpoint]
                    tally.cpu += spent
                    tally.requests += done
                    tally.seconds += elapsed
                    tally.bursts.append(spent / done * 1e6)
            print(f"{endpoint}: done", file=sys.stderr)
        lines = {
            name: (directory / f"{number}.log").read_text().count("\n") for number, name in enumerate(servers)
        }
    off, on = CONFIGURATIONS
    print(
        f"\nlogs and metrics: one uvicorn worker each, both running, wrk {options.connections} connections,"
        f" {options.bursts} alternating bursts of {options.seconds:g} s per endpoint and configuration"
    )
    print(f"| endpoint | {off}: µs CPU/req (req/s) | {on}: µs CPU/req (req/s) | CPU ratio |")
    print("|---|---|---|---|")
    worst = 0.0
    for endpoint in ENDPOINTS:
        cpu = {name: tallies[name][endpoint].cpu / tallies[name][endpoint].requests * 1e6 for name in tallies}
        rate = {name: tallies[name][endpoint].requests / tallies[name][endpoint].seconds for name in tallies}
        ratio = cpu[on] / cpu[off]
        worst = max(worst, ratio)
        print(
            f"| {endpoint} | {cpu[off]:.0f} ({rate[off]:.0f})"
            f" | {cpu[on]:.0f} ({rate[on]:.0f}) | {ratio:.3f} |"
        )
    for name in tallies:
        spread = {
            endpoint: [round(value) for value in tallies[name][endpoint].bursts] for endpoint in ENDPOINTS
        }
        print(f"bursts, µs CPU/request, {name}: {spread}")
    print(f"log lines written: {lines}")
    verdict = "within" if worst <= TARGET else "OVER"
    print(f"worst CPU ratio {worst:.3f}: {verdict} the {TARGET:.2f} target")


if __name__ == "__main__":
    main()
