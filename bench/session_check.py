"""What checking the caller costs: `GET /api/v1/users/me` as a logged-in user, measured on
the server process.

Issue 11 asks that checking a token's session cost no more than the token-version check it
replaced: one indexed statement per request. This starts blogapi (one uvicorn worker, the
code on the path), signs a user up and logs in, then sends `--requests` GETs over
`--connections` concurrent connections, and prints the server's CPU time per request
(user + system, from /proc) and the requests per second. The database's own CPU is not in
it. Run it for two revisions side by side, each on its own database (schemas differ):

    git archive main src | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before/src .venv/bin/python bench/session_check.py --label before \\
        --database-url postgresql+asyncpg://root@127.0.0.1:5432/blogapi_bench_me_before
    .venv/bin/python bench/session_check.py --label after \\
        --database-url postgresql+asyncpg://root@127.0.0.1:5432/blogapi_bench_me_after

Each run is bounded: a 30 s readiness limit and a fixed number of requests.
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
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench password 123"  # noqa: S105  (a throwaway account's)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(base_url: str, pid: int, requests: int, connections: int) -> tuple[float, float]:
    """(server CPU microseconds per request, requests per second)."""
    email = f"bench-{secrets.token_hex(6)}@example.com"
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        created = await client.post(
            "/api/v1/users", json={"name": "Bench", "email": email, "password": PASSWORD}
        )
        assert created.status_code == 201, created.text
        login = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

        async def worker(count: int) -> None:
            for _ in range(count):
                response = await client.get("/api/v1/users/me", headers=headers)
                assert response.status_code == 200, response.text

        await asyncio.gather(*(worker(50) for _ in range(connections)))  # warm-up
        per_connection = requests // connections
        cpu_before, started = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(worker(per_connection) for _ in range(connections)))
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
    done = per_connection * connections
    return cpu / done * 1e6, done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--label", default="blogapi")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="the best of this many runs is printed")
    options = parser.parse_args()
    env = os.environ | {
        "DATABASE_URL": options.database_url,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "ENVIRONMENT": "production",
    }
    blogapi = [sys.executable, "-c", "from blogapi.cli import main; main()"]
    subprocess.run([*blogapi, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=300)  # noqa: S603
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "blogapi.asgi:app", "--port", str(port), "--no-access-log"]
    server = subprocess.Popen(  # noqa: S603  (our own interpreter and arguments)
        argv,
        env=env,
        cwd=tempfile.gettempdir(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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
            raise SystemExit("the server never became ready")
        results = [
            asyncio.run(measure(base_url, server.pid, options.requests, options.connections))
            for _ in range(options.runs)
        ]
        cpu, rate = min(result[0] for result in results), max(result[1] for result in results)
        print(
            f"{options.label}: GET /api/v1/users/me  {cpu:6.0f} µs server CPU/request  {rate:6.0f} requests/s"
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
