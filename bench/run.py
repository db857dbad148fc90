"""Benchmark blogapi against two baselines with wrk; and its lists at 10k and 1M posts.

`make bench` runs it; bench/README.md explains the runs and how to read the results.
Run it with the project's interpreter: `.venv/bin/python bench/run.py --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib.util
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import httpx
import pymysql
from asgi_lifespan import LifespanManager
from sqlalchemy import event, make_url
from sqlalchemy.engine import Engine

from blogapi.config import Settings
from blogapi.main import create_app
from blogapi.pagination import CursorCodec

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # .venv/bin: the servers run from the same environment
RESULTS = BENCH / "results"
LOGS = RESULTS / "logs"
LUA = BENCH / "wrk" / "scenarios.lua"
PACED_LUA = BENCH / "wrk" / "paced.lua"

APPS = ("blogapi", "tutorial", "raw")
READS = ("post", "posts_page", "user_posts", "user")
WRITES = ("create_post", "mix")  # these add rows; the runner deletes them after each run
SCENARIOS = READS + WRITES
TITLES = {
    "post": "GET /api/v1/posts/{id}",
    "posts_page": "GET /api/v1/posts?limit=20",
    "user_posts": "GET /api/v1/users/{id}/posts",
    "user": "GET /api/v1/users/{id}",
    "create_post": "POST /api/v1/posts",
    "mix": "90% reads / 10% POST",
    "signup": "POST /api/v1/users (sign-up)",
    "login": "POST /api/v1/auth/token (login)",
}
# The first request of each scenario, sent once before it runs: it must succeed, and every
# app must answer it with the same JSON as blogapi (for POST: the same shape).
PREFLIGHT = {
    "post": "/api/v1/posts/1",
    "posts_page": "/api/v1/posts?limit=20",
    "user_posts": "/api/v1/users/1/posts",
    "user": "/api/v1/users/1",
}
SEED_EMAIL = "user1@example.org"  # blogapi.seed names its users user<n>@example.org
SEED_PASSWORD = "seed-password"  # noqa: S105  (blogapi.seed.SEED_PASSWORD)
BENCH_AUTHOR_ID = 1  # the baselines' POSTs are by user 1, as blogapi's (logged in as user1)
# The baselines' uvicorn flags. blogapi runs as shipped, `blogapi serve`: uvicorn's defaults
# (uvloop and httptools when installed, as here) with its access log on.
UVICORN_FLAGS = ("--loop", "uvloop", "--http", "httptools", "--no-access-log")
WRK_TIMEOUT = "10s"  # Argon2 logins queue behind HASH_CONCURRENCY: wrk's default 2 s is too short
READY_TIMEOUT = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")


class BenchError(Exception):
    """The benchmark cannot go on (a server failed, the apps disagree, time ran out)."""


# -- options -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    rounds: int
    duration: int
    warmup: int
    connections: int
    wrk_threads: int
    scenarios: tuple[str, ...]
    users: int
    posts_per_user: int
    postgres_url: str
    sqlite: bool
    workers: bool
    soak: bool
    soak_seconds: int
    auth: bool
    auth_seconds: int
    time_limit_minutes: float
    write_results_md: bool
    merge: str | None  # a path; a str so that the options stay JSON
    main: bool
    workers_rounds: int
    scale: bool
    scale_sizes: tuple[int, ...]  # posts; 10 per user
    scale_backends: tuple[str, ...]
    scale_rounds: int
    scale_duration: int
    scale_warmup: int
    scale_connections: int
    mariadb_url: str
    pgbouncer: bool
    pgbouncer_rounds: int
    pgbouncer_port: int

    @property
    def posts(self) -> int:
        return self.users * self.posts_per_user


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s runs, no extras, no RESULTS.md")
    parser.add_argument("--rounds", type=int, help="alternating rounds of the three apps (default 3)")
    parser.add_argument("--duration", type=int, help="seconds measured per scenario (default 10)")
    parser.add_argument(
        "--warmup", type=int, help="seconds of the same scenario before measuring (default 3)"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}"
    )
    parser.add_argument("--users", type=int, default=10_000, help="seeded users (default 10000)")
    parser.add_argument("--posts-per-user", type=int, default=10, help="seeded posts per user (default 10)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "BENCH_POSTGRES_URL", "postgresql+asyncpg://root@127.0.0.1:5432/blogapi_bench"
        ),
        help="the dedicated benchmark database, created if missing (env BENCH_POSTGRES_URL)",
    )
    for extra, help_text in (
        ("sqlite", "the scenarios on SQLite (blogapi only)"),
        ("workers", "`blogapi serve --workers 1` and `--workers 2` side by side, in alternating rounds"),
        ("soak", "a mixed soak on blogapi: RSS, errors, busy connections afterwards"),
        ("auth", "sign-up and login cost, and GET latency during a burst of logins"),
        (
            "pgbouncer",
            "blogapi direct to PostgreSQL and through PgBouncer side by side, in alternating rounds",
        ),
    ):
        parser.add_argument(
            f"--{extra}",
            action=argparse.BooleanOptionalAction,
            help=f"{help_text} (default: on; off with --quick)",
        )
    parser.add_argument("--soak-seconds", type=int, help="soak length (default 120)")
    parser.add_argument(
        "--workers-rounds", type=int, help="alternating rounds of --workers 1 and 2 (default 2)"
    )
    parser.add_argument(
        "--scale",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the lists at 10k and 1M posts on PostgreSQL and MariaDB (default on; --quick: 10k, PostgreSQL)",
    )
    parser.add_argument(
        "--scale-only",
        action="store_true",
        help="only the scale runs: no baselines, no extras (RESULTS.md is still rewritten unless --quick)",
    )
    parser.add_argument(
        "--scale-sizes",
        help="posts per scale data set, comma-separated (default 10000,1000000; --quick 10000)",
    )
    parser.add_argument(
        "--scale-backends",
        help="backends of the scale runs (default postgresql,mariadb; --quick: postgresql)",
    )
    parser.add_argument("--scale-rounds", type=int, help="rounds of the scale runs (default 2)")
    parser.add_argument("--scale-duration", type=int, help="seconds measured per scale scenario (default 5)")
    parser.add_argument("--scale-warmup", type=int, help="seconds of warm-up per scale scenario (default 2)")
    parser.add_argument(
        "--scale-connections", type=int, default=8, help="wrk connections in the scale runs (default 8)"
    )
    parser.add_argument(
        "--mariadb-url",
        default=os.environ.get("BENCH_MARIADB_URL", "mysql+aiomysql://root@127.0.0.1:3306/blogapi_bench"),
        help="the MariaDB server and base name of the scale databases (env BENCH_MARIADB_URL)",
    )
    parser.add_argument("--auth-seconds", type=int, help="length of each sign-up/login run (default 10)")
    parser.add_argument(
        "--pgbouncer-only",
        action="store_true",
        help="only the PgBouncer part: no baselines, no other extras, no scale runs"
        " (RESULTS.md is still rewritten unless --quick: add --merge)",
    )
    parser.add_argument(
        "--pgbouncer-rounds", type=int, help="alternating rounds of direct and PgBouncer (default 3)"
    )
    parser.add_argument(
        "--pgbouncer-port",
        type=int,
        default=int(os.environ.get("BENCH_PGBOUNCER_PORT", "6439")),
        help="the port of the PgBouncer the runner starts with deploy/pgbouncer.sh"
        " (default 6439, env BENCH_PGBOUNCER_PORT; not make pgbouncer-start's 6432)",
    )
    parser.add_argument(
        "--time-limit", type=float, default=75.0, help="abort after this many minutes (default 75)"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        help="the latest.json of an earlier run whose parts this run lacks (the scale runs, say):"
        " they are reported beside this run's, each with its own command, time and revision",
    )
    args = parser.parse_args(argv)

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if args.quick else full)

    scenarios = tuple(name for name in args.scenarios.split(",") if name)
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    backends = pick(args.scale_backends, "postgresql,mariadb", "postgresql")
    scale_backends = tuple(name for name in backends.split(",") if name)
    if set(scale_backends) - {"postgresql", "mariadb"}:
        parser.error("--scale-backends: postgresql and/or mariadb")
    sizes = pick(args.scale_sizes, "10000,1000000", "10000")
    try:
        scale_sizes = tuple(sorted(int(size) for size in sizes.split(",") if size))
    except ValueError:
        parser.error(f"--scale-sizes: numbers of posts, not {sizes!r}")
    if any(size < 100 or size % 10 for size in scale_sizes):
        parser.error("--scale-sizes: multiples of 10 posts, at least 100 (10 posts per user)")
    if args.scale_only and args.pgbouncer_only:
        parser.error("--scale-only and --pgbouncer-only: one of them")
    extras = not args.scale_only and not args.pgbouncer_only
    return Options(
        rounds=pick(args.rounds, 3, 1),
        duration=pick(args.duration, 10, 3),
        warmup=pick(args.warmup, 3, 1),
        connections=args.connections,
        wrk_threads=args.wrk_threads,
        scenarios=scenarios,
        users=args.users,
        posts_per_user=args.posts_per_user,
        postgres_url=args.postgres_url,
        sqlite=extras and pick(args.sqlite, True, False),
        workers=extras and pick(args.workers, True, False),
        soak=extras and pick(args.soak, True, False),
        soak_seconds=pick(args.soak_seconds, 120, 15),
        auth=extras and pick(args.auth, True, False),
        auth_seconds=pick(args.auth_seconds, 10, 3),
        time_limit_minutes=args.time_limit,
        write_results_md=not args.quick,
        merge=str(args.merge) if args.merge else None,
        main=extras,
        workers_rounds=pick(args.workers_rounds, 2, 1),
        scale=(args.scale and not args.pgbouncer_only) or args.scale_only,
        scale_sizes=scale_sizes,
        scale_backends=scale_backends,
        scale_rounds=pick(args.scale_rounds, 2, 1),
        scale_duration=pick(args.scale_duration, 5, 2),
        scale_warmup=pick(args.scale_warmup, 2, 0),
        scale_connections=args.scale_connections,
        mariadb_url=args.mariadb_url,
        pgbouncer=args.pgbouncer_only or (extras and pick(args.pgbouncer, True, False)),
        pgbouncer_rounds=pick(args.pgbouncer_rounds, 3, 1),
        pgbouncer_port=args.pgbouncer_port,
    )


# -- processes ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the runner dies, so no server outlives a run."""
    if sys.platform == "linux":
        PR_SET_PDEATHSIG = 1  # noqa: N806  (the C constant's name)
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError):
                continue  # exited meanwhile
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def _cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU of processes, their reaped children included (utime..cstime)."""
    ticks = 0
    for pid in pids:
        try:
            ticks += sum(int(value) for value in _stat_fields(pid)[11:15])
        except (OSError, IndexError):
            continue
    return ticks / CLOCK_TICKS


def cpu_seconds(root: int) -> float:
    return _cpu_seconds(process_tree(root))


def backends_of(database: str) -> list[int]:
    """PostgreSQL backends serving `database`: their title reads "postgres: ... user database host"."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f" {database} " in (entry / "cmdline").read_text(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far: by the whole machine, and by each party to a run."""

    machine: float
    server: float
    backends: dict[int, float]  # PostgreSQL backends of the benchmark database, by pid
    wrk: float  # the runner's reaped children: the wrk runs
    pooler: float = 0.0  # the PgBouncer between the server and PostgreSQL, if any

    @classmethod
    def take(cls, server_pid: int, database: str | None, pooler_pid: int | None = None) -> CpuSample:
        user, nice, system, _idle, _iowait, irq, softirq = (
            int(value) for value in Path("/proc/stat").read_text().split(maxsplit=8)[1:8]
        )
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(
            machine=(user + nice + system + irq + softirq) / CLOCK_TICKS,
            server=cpu_seconds(server_pid),
            backends={pid: _cpu_seconds([pid]) for pid in backends_of(database)} if database else {},
            wrk=children.ru_utime + children.ru_stime,
            pooler=_cpu_seconds([pooler_pid]) if pooler_pid is not None else 0.0,
        )

    def database_since(self, before: CpuSample) -> float:
        """The backends' CPU since `before`; a backend that ended meanwhile is left out (undercounted)."""
        return sum(seconds - before.backends.get(pid, 0.0) for pid, seconds in self.backends.items())


def rss_mib(root: int) -> float:
    total_kib = 0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total_kib += int(match.group(1)) if match else 0
    return total_kib / 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_command(argv: Sequence[str], env: dict[str, str], log: Path, timeout: float) -> None:
    with log.open("ab") as output:
        result = subprocess.run(  # noqa: S603  (our own executables, no shell)
            argv, env=env, cwd=RESULTS, stdout=output, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({result.returncode}); see {log}")


@dataclass(frozen=True)
class AppSpec:
    """How to start one app: its command (host and port are added) and environment."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]


class Server:
    """One app server on 127.0.0.1, started in its own process group and stopped with it.

    `pooler_pid`: the PgBouncer it reaches PostgreSQL through, whose CPU is measured with it.
    """

    def __init__(self, spec: AppSpec, label: str, pooler_pid: int | None = None) -> None:
        self.spec = spec
        self.pooler_pid = pooler_pid
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = LOGS / f"{label}.log"
        self.process: subprocess.Popen[bytes] | None = None
        url = make_url(spec.env["DATABASE_URL"])
        self.database = url.database if url.get_backend_name() == "postgresql" else None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Server:
        argv = [*self.spec.argv, "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("wb") as log:
            # stdout is dropped: the tutorial's echo=True prints every statement there.
            self.process = subprocess.Popen(  # noqa: S603  (our own executables, no shell)
                argv,
                env=self.spec.env,
                cwd=RESULTS,  # no stray .env file is read
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # safe: the runner has one thread
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(
                    f"{self.spec.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if http(f"{self.url}/health/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise BenchError(f"{self.spec.name} not ready after {READY_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def quiesce(self, timeout: float = 15) -> None:
        """Wait until the server is idle: wrk stops sending, but requests in flight run on."""
        deadline = time.monotonic() + timeout
        before = cpu_seconds(self.pid)
        while time.monotonic() < deadline:
            time.sleep(0.25)
            after = cpu_seconds(self.pid)
            if after - before < 0.01:
                return
            before = after

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after 10 s, and reap."""
        if self.process is None:
            return
        group = self.process.pid  # start_new_session: the group id is the leader's pid
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _group_alive(group):
            self.process.poll()
            time.sleep(0.1)
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def log_errors(self) -> list[str]:
        """Lines of the server's log that report an error (tracebacks, ERROR records)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if re.search(r"\bERROR\b|^Traceback", line)]


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


# -- HTTP and wrk -------------------------------------------------------------------------


def http(
    url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, headers=headers or {})  # noqa: S310  (http://127.0.0.1 only)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def login(url: str) -> str:
    form = urlencode({"username": SEED_EMAIL, "password": SEED_PASSWORD}).encode()
    status, body = http(f"{url}/api/v1/auth/token", data=form)
    if status != 200:
        raise BenchError(f"login as {SEED_EMAIL} failed: {status} {body}")
    token: str = body["access_token"]
    return token


@dataclass(frozen=True)
class Run:
    """One measured wrk run: latencies in milliseconds, CPU per request in milliseconds."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int  # wrk counts responses with status >= 400; 1xx and 3xx never occur here
    socket_errors: int
    cpu_ms_per_request: float | None = None  # the server's process tree
    db_cpu_ms_per_request: float | None = None  # PostgreSQL's backends for the benchmark database
    other_cores: float | None = None  # CPU taken by everything else on the machine meanwhile
    pooler_cpu_ms_per_request: float | None = None  # PgBouncer's process, when the server goes through it


@dataclass(frozen=True)
class Load:
    """What wrk sends: a scenario of bench/wrk/scenarios.lua and its arguments."""

    scenario: str
    posts: int
    users: int
    auth: str  # "bearer:<token>" for blogapi, "author:<id>" for the baselines
    connections: int
    paths: tuple[str, ...] = ()  # the `paths` scenario's GET paths, one drawn per request
    pause_ms: int = 0  # > 0: paced.lua, each connection pausing this long between requests


def start_wrk(url: str, load: Load, seconds: int, threads: int) -> subprocess.Popen[str]:
    executable = shutil.which("wrk")
    if executable is None:
        raise BenchError("wrk is not installed: `apt-get install wrk` (or run `make bench` as root)")
    argv = [
        executable,
        f"--threads={min(threads, load.connections)}",
        f"--connections={load.connections}",
        f"--duration={seconds}s",
        f"--timeout={WRK_TIMEOUT}",
        f"--script={PACED_LUA if load.pause_ms else LUA}",
        url,
        "--",
        load.scenario,
        str(load.posts),
        str(load.users),
        load.auth,
        secrets.token_hex(6),  # a nonce: sign-up emails differ between runs
        " ".join(load.paths),
        str(load.pause_ms),
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603


def finish_wrk(process: subprocess.Popen[str], seconds: int) -> Run:
    try:
        stdout, stderr = process.communicate(timeout=seconds + 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    line = next((line for line in stdout.splitlines() if line.startswith("BENCH_JSON ")), None)
    if process.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({process.returncode}):\n{stdout}\n{stderr}")
    report = json.loads(line.removeprefix("BENCH_JSON "))
    errors, latency = report["errors"], report["latency_us"]
    elapsed = report["duration_us"] / 1e6
    return Run(
        requests=report["requests"],
        seconds=round(elapsed, 2),
        rps=round(report["requests"] / elapsed, 1),
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        non2xx=errors["status"],
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
    )


def wrk(url: str, load: Load, seconds: int, threads: int) -> Run:
    return finish_wrk(start_wrk(url, load, seconds, threads), seconds)


def measure(server: Server, load: Load, seconds: int, warmup: int, threads: int) -> Run:
    """Warm up with the scenario itself, then measure it, with who used how much CPU meanwhile."""
    if warmup > 0:
        wrk(server.url, load, warmup, threads)
    before = CpuSample.take(server.pid, server.database, server.pooler_pid)
    run = wrk(server.url, load, seconds, threads)
    after = CpuSample.take(server.pid, server.database, server.pooler_pid)
    server_cpu, database_cpu = after.server - before.server, after.database_since(before)
    pooler_cpu = after.pooler - before.pooler
    other = (
        (after.machine - before.machine) - server_cpu - database_cpu - pooler_cpu - (after.wrk - before.wrk)
    )
    return replace(
        run,
        pooler_cpu_ms_per_request=(
            round(pooler_cpu * 1000 / run.requests, 3) if run.requests and server.pooler_pid else None
        ),
        cpu_ms_per_request=round(server_cpu * 1000 / run.requests, 3) if run.requests else None,
        db_cpu_ms_per_request=(
            round(database_cpu * 1000 / run.requests, 3) if run.requests and server.database else None
        ),
        other_cores=round(max(other, 0.0) / run.seconds, 2),
    )


# -- databases -----------------------------------------------------------------------------


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def _pg(dsn: str, statement: str, args: Sequence[Any]) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await connection.fetch(statement, *args)
        return rows
    finally:
        await connection.close()


def pg(dsn: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    """One statement on its own connection, in autocommit (VACUUM needs that)."""
    return asyncio.run(_pg(dsn, statement, args))


class Dataset(ABC):
    """The seeded database of one backend: `blogapi seed` rows, and nothing else between runs."""

    def __init__(self, database_url: str, users: int, posts_per_user: int) -> None:
        self.url = database_url
        self.users = users
        self.posts = users * posts_per_user
        self.posts_per_user = posts_per_user

    def env(self) -> dict[str, str]:
        return {**os.environ, "DATABASE_URL": self.url}

    def prepare(self) -> None:
        """Migrate; seed only if the rows are not exactly the seeded ones (ids 1..N)."""
        self.create()
        self.blogapi("db", "upgrade")
        self.cleanup()
        if self.counts() == self.expected():
            print(f"  {self.url}: already seeded ({self.users} users, {self.posts} posts)", flush=True)
            return
        print(f"  {self.url}: seeding {self.users} users, {self.posts} posts", flush=True)
        self.drop()
        self.create()
        self.blogapi("db", "upgrade")
        started = time.monotonic()
        self.blogapi(*f"seed --users {self.users} --posts-per-user {self.posts_per_user} --seed 1".split())
        if self.counts() != self.expected():
            raise BenchError(f"seeding {self.url} gave {self.counts()}; see {LOGS / 'seed.log'}")
        print(f"  seeded in {time.monotonic() - started:.0f} s", flush=True)
        self.cleanup()

    def blogapi(self, *args: str) -> None:
        # 1M posts take ~130 s on PostgreSQL on an idle machine; far longer on a loaded one.
        run_command([str(BIN / "blogapi"), *args], self.env(), LOGS / "seed.log", timeout=1800)

    def expected(self) -> tuple[int, int, int, int]:
        return self.users, self.users, self.posts, self.posts

    @abstractmethod
    def create(self) -> None: ...

    @abstractmethod
    def drop(self) -> None: ...

    @abstractmethod
    def counts(self) -> tuple[int, int, int, int]:
        """User count, highest user id, post count, highest post id."""

    @abstractmethod
    def cleanup(self) -> None:
        """Delete what the benchmark added (posts, sign-ups) and tidy up after it."""

    def active_queries(self) -> list[int]:
        """Ids of the statements running on the database for others than the runner."""
        return []

    def cancel(self, ids: Sequence[int]) -> None:  # noqa: B027  (SQLite: nothing runs on its own)
        """Cancel running statements (left by a server that was stopped mid-request)."""

    def settle(self, timeout: float = 90) -> int:
        """Wait until no statement runs on the database; cancel what is left after `timeout`.

        The app server goes idle while its statements still run: without a statement time
        limit a scan outlives its request, its client, even its server, and would load the
        next measurement. Returns how many statements had to be cancelled.
        """
        deadline = time.monotonic() + timeout
        while (running := self.active_queries()) and time.monotonic() < deadline:
            time.sleep(0.5)
        if running:
            self.cancel(running)
            time.sleep(1)
        return len(running)


COUNTS = 'SELECT (SELECT count(*) FROM "user"), (SELECT coalesce(max(id), 0) FROM "user"),'
COUNTS += " (SELECT count(*) FROM post), (SELECT coalesce(max(id), 0) FROM post)"
# The posts the benchmark deleted took their links along (ON DELETE CASCADE), but not the
# tags' counts, which blogapi keeps with the links: count them again.
RECOUNT_TAGS = "UPDATE tag SET post_count = (SELECT count(*) FROM post_tag WHERE post_tag.tag_id = tag.id)"


class PostgresDataset(Dataset):
    @property
    def name(self) -> str:
        return make_url(self.url).database or "blogapi_bench"

    def create(self) -> None:
        admin = _asyncpg_dsn(self.url, "postgres")
        if not pg(admin, "SELECT 1 FROM pg_database WHERE datname = $1", self.name):
            pg(admin, f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        pg(_asyncpg_dsn(self.url, "postgres"), f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def counts(self) -> tuple[int, int, int, int]:
        row = pg(_asyncpg_dsn(self.url), COUNTS)[0]
        return row[0], row[1], row[2], row[3]

    def cleanup(self) -> None:
        # Dead rows at the newest end of the post indexes would slow the next runs'
        # first page: vacuum them now rather than let autovacuum wake mid-run.
        dsn = _asyncpg_dsn(self.url)
        deleted = pg(
            dsn,
            "WITH gone AS (DELETE FROM post WHERE id > $1 RETURNING 1) SELECT count(*) FROM gone",
            self.posts,
        )
        pg(dsn, 'DELETE FROM "user" WHERE id > $1', self.users)
        if deleted[0][0]:
            pg(dsn, RECOUNT_TAGS)
        pg(dsn, 'VACUUM ANALYZE post, post_tag, "user", tag')

    def active_queries(self) -> list[int]:
        rows = pg(
            _asyncpg_dsn(self.url),
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()",
            self.name,
        )
        return [row[0] for row in rows]

    def cancel(self, ids: Sequence[int]) -> None:
        pg(_asyncpg_dsn(self.url), "SELECT pg_cancel_backend(pid) FROM unnest($1::int[]) AS pid", list(ids))

    def busy_connections(self, application_name: str) -> tuple[int, int]:
        """Connections of an application in use (not idle) and in all, by pg_stat_activity."""
        row = pg(
            _asyncpg_dsn(self.url),
            "SELECT count(*) FILTER (WHERE state <> 'idle'), count(*) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = $2",
            application_name,
            self.name,
        )[0]
        return row[0], row[1]

    def server_version(self) -> str:
        return str(pg(_asyncpg_dsn(self.url, "postgres"), "SHOW server_version")[0][0])


class MariadbDataset(Dataset):
    """A MariaDB database (scale runs only): `blogapi db upgrade` creates it."""

    @property
    def name(self) -> str:
        return make_url(self.url).database or "blogapi_bench"

    def connect(self, database: str | None = None) -> pymysql.connections.Connection[Any]:
        url = make_url(self.url)
        return pymysql.connect(
            host=url.host or "127.0.0.1",
            port=url.port or 3306,
            user=url.username or "root",
            password=url.password or "",
            database=database,
            autocommit=True,
            charset="utf8mb4",
        )

    def query(self, statement: str, *args: Any, database: str | None = "") -> list[tuple[Any, ...]]:
        connection = self.connect(self.name if database == "" else database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement, args or None)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def create(self) -> None:
        pass  # `blogapi db upgrade` creates the database, as an operator would

    def drop(self) -> None:
        self.query(f"DROP DATABASE IF EXISTS `{self.name}`", database=None)

    def counts(self) -> tuple[int, int, int, int]:
        row = self.query(COUNTS.replace('"user"', "`user`"))[0]
        return row[0], row[1], row[2], row[3]

    def cleanup(self) -> None:
        deleted = self.query("SELECT count(*) FROM post WHERE id > %s", self.posts)[0][0]
        self.query("DELETE FROM post WHERE id > %s", self.posts)
        self.query("DELETE FROM `user` WHERE id > %s", self.users)
        if deleted:
            self.query(RECOUNT_TAGS)
        self.query("ANALYZE TABLE post, post_tag, `user`, tag")

    def active_queries(self) -> list[int]:
        rows = self.query(
            "SELECT id FROM information_schema.processlist"
            " WHERE db = %s AND command = 'Query' AND id <> connection_id()",
            self.name,
        )
        return [row[0] for row in rows]

    def cancel(self, ids: Sequence[int]) -> None:
        for query_id in ids:
            with suppress(pymysql.MySQLError):  # it ended meanwhile
                self.query(f"KILL QUERY {int(query_id)}")

    def server_version(self) -> str:
        return str(self.query("SELECT version()")[0][0])


class SqliteDataset(Dataset):
    def __init__(self, path: Path, options: Options) -> None:
        super().__init__(f"sqlite+aiosqlite:///{path}", options.users, options.posts_per_user)
        self.path = path

    def create(self) -> None:
        pass  # `blogapi db upgrade` creates the file

    def drop(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def counts(self) -> tuple[int, int, int, int]:
        with sqlite3.connect(self.path) as connection:
            row = connection.execute(COUNTS).fetchone()
        return row[0], row[1], row[2], row[3]

    def cleanup(self) -> None:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            connection.execute("PRAGMA foreign_keys = ON")  # post_tag rows go with their posts
            deleted = connection.execute("DELETE FROM post WHERE id > ?", (self.posts,)).rowcount
            connection.execute('DELETE FROM "user" WHERE id > ?', (self.users,))
            if deleted:
                connection.execute(RECOUNT_TAGS)
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            connection.close()


# -- the apps ------------------------------------------------------------------------------


def blogapi_env(dataset: Dataset, secret_key: str) -> dict[str, str]:
    # The sign-up scenario signs up thousands of users from one address: the per-address
    # limit (a production default of 20 an hour) would answer it with 429s.
    return {
        **dataset.env(),
        "ENVIRONMENT": "production",
        "SECRET_KEY": secret_key,
        "SIGNUPS_PER_ADDRESS": "1000000000",
    }


def blogapi_spec(dataset: Dataset, secret_key: str, workers: int = 1) -> AppSpec:
    """blogapi as shipped: `blogapi serve` (uvicorn's defaults, its access log on)."""
    argv = (str(BIN / "blogapi"), "serve", "--workers", str(workers))
    return AppSpec("blogapi", argv, blogapi_env(dataset, secret_key))


def app_specs(dataset: Dataset, secret_key: str) -> dict[str, AppSpec]:
    uvicorn = str(BIN / "uvicorn")
    baselines = ("--app-dir", str(BENCH / "baselines"))
    return {
        "blogapi": blogapi_spec(dataset, secret_key),
        "tutorial": AppSpec("tutorial", (uvicorn, "tutorial:app", *baselines, *UVICORN_FLAGS), dataset.env()),
        "raw": AppSpec("raw", (uvicorn, "raw:app", *baselines, *UVICORN_FLAGS), dataset.env()),
    }


def auth_for(app: str, server: Server) -> str:
    return f"bearer:{login(server.url)}" if app == "blogapi" else f"author:{BENCH_AUTHOR_ID}"


def shape(value: Any, key: str = "") -> Any:
    """The JSON's structure and types, with UTC ISO 8601 datetimes told apart from strings."""
    if isinstance(value, dict):
        return {name: shape(item, name) for name, item in value.items()}
    if isinstance(value, list):
        return [shape(item, key) for item in value[:1]]
    if key.endswith("_at") and isinstance(value, str):
        return "datetime" if ISO_UTC.match(value) else f"not a UTC datetime: {value}"
    return type(value).__name__


def comparable(body: Any) -> Any:
    """A GET response as the apps must agree on it: the cursor is each app's own."""
    if isinstance(body, dict) and "next_cursor" in body:
        return {**body, "next_cursor": shape(body["next_cursor"])}
    return body


class Preflight:
    """Send each scenario's first request once: it must succeed and match blogapi's answer."""

    def __init__(self) -> None:
        self.expected: dict[str, Any] = {}

    def check(self, app: str, server: Server, scenario: str, auth: str) -> None:
        if scenario in PREFLIGHT:
            status, body = http(server.url + PREFLIGHT[scenario])
            answer = comparable(body)
        elif scenario == "create_post":
            status, body = http(
                f"{server.url}/api/v1/posts",
                data=json.dumps(_post_body(auth)).encode(),
                headers=_headers(auth),
            )
            answer = shape(body) if isinstance(body, dict) else body
            if isinstance(body, dict) and body.get("tags") != ["python", "sql"]:
                raise BenchError(f"{app}: POST /api/v1/posts returned tags {body.get('tags')}")
        else:
            return
        if not 200 <= status < 300:
            raise BenchError(f"{app}: {scenario} answered {status}: {body}")
        reference = self.expected.setdefault(scenario, answer)
        if answer != reference:
            raise BenchError(f"{app} and blogapi disagree on {scenario}:\n{answer}\n!=\n{reference}")


def _post_body(auth: str) -> dict[str, Any]:
    body: dict[str, Any] = {"title": "Preflight", "body": "Checks the shape.", "tags": ["sql", "Python"]}
    kind, _, value = auth.partition(":")
    return body if kind == "bearer" else {**body, "author_id": int(value)}


def _headers(auth: str) -> dict[str, str]:
    kind, _, value = auth.partition(":")
    bearer = {"Authorization": f"Bearer {value}"} if kind == "bearer" else {}
    return {"Content-Type": "application/json", **bearer}


def run_scenarios(
    app: str, server: Server, dataset: Dataset, options: Options, preflight: Preflight, label: str
) -> dict[str, Run]:
    auth = auth_for(app, server)
    runs: dict[str, Run] = {}
    for scenario in options.scenarios:
        preflight.check(app, server, scenario, auth)
        load = Load(scenario, dataset.posts, dataset.users, auth, options.connections)
        runs[scenario] = run = measure(server, load, options.duration, options.warmup, options.wrk_threads)
        if scenario in WRITES:
            server.quiesce()
            dataset.cleanup()
        print(f"  {label:>9} {app:>8} {scenario:>11}: {describe(run)}", flush=True)
    return runs


def describe(run: Run) -> str:
    errors = f"  non-2xx {run.non2xx}" if run.non2xx else ""
    errors += f"  socket errors {run.socket_errors}" if run.socket_errors else ""
    return (
        f"{run.rps:7.0f} req/s  p50 {run.p50_ms:6.1f} ms  p99 {run.p99_ms:6.1f} ms"
        f"  CPU/req app {_number(run.cpu_ms_per_request)} ms, db {_number(run.db_cpu_ms_per_request)} ms"
        f"  other load {_number(run.other_cores, 1)} cores{errors}"
    )


# -- the runs ------------------------------------------------------------------------------


def main_rounds(
    dataset: PostgresDataset, options: Options, secret_key: str, server_errors: dict[str, list[str]]
) -> list[dict[str, dict[str, Run]]]:
    """Rounds of A B C: each app serves every scenario in turn, then the next app starts."""
    specs = app_specs(dataset, secret_key)
    preflight = Preflight()
    rounds: list[dict[str, dict[str, Run]]] = []
    for number in range(1, options.rounds + 1):
        by_scenario: dict[str, dict[str, Run]] = {scenario: {} for scenario in options.scenarios}
        for app in APPS:
            with Server(specs[app], f"round{number}-{app}") as server:
                runs = run_scenarios(app, server, dataset, options, preflight, f"round {number}")
            server_errors.setdefault(app, []).extend(server.log_errors())
            for scenario, run in runs.items():
                by_scenario[scenario][app] = run
        rounds.append(by_scenario)
    return rounds


def summarize(rounds: list[dict[str, dict[str, Run]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Medians across rounds; each app's requests/s ratio to raw is taken within a round."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario in rounds[0]:
        summary[scenario] = {}
        for app in rounds[0][scenario]:
            runs = [round_[scenario][app] for round_ in rounds]
            ratios = [round_[scenario][app].rps / round_[scenario]["raw"].rps for round_ in rounds]
            summary[scenario][app] = {
                "rps": statistics.median(run.rps for run in runs),
                "ratio_to_raw": round(statistics.median(ratios), 3),
                "ratios_by_round": [round(ratio, 3) for ratio in ratios],
                "p50_ms": statistics.median(run.p50_ms for run in runs),
                "p99_ms": statistics.median(run.p99_ms for run in runs),
                "cpu_ms_per_request": _median(run.cpu_ms_per_request for run in runs),
                "db_cpu_ms_per_request": _median(run.db_cpu_ms_per_request for run in runs),
                "other_cores": _median(run.other_cores for run in runs),
                "non2xx": sum(run.non2xx for run in runs),
                "socket_errors": sum(run.socket_errors for run in runs),
            }
        if {"blogapi", "tutorial"} <= summary[scenario].keys():
            # The "3x the tutorial" target, also side by side: within each round, then the median.
            ratios = [round_[scenario]["blogapi"].rps / round_[scenario]["tutorial"].rps for round_ in rounds]
            summary[scenario]["blogapi"]["ratio_to_tutorial"] = round(statistics.median(ratios), 3)
            summary[scenario]["blogapi"]["ratios_to_tutorial_by_round"] = [
                round(ratio, 3) for ratio in ratios
            ]
    return summary


def _median(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def sqlite_runs(options: Options, secret_key: str, server_errors: dict[str, list[str]]) -> dict[str, Run]:
    dataset = SqliteDataset(RESULTS / "blogapi_bench.db", options)
    dataset.prepare()
    spec = app_specs(dataset, secret_key)["blogapi"]
    with Server(spec, "sqlite-blogapi") as server:
        runs = run_scenarios("blogapi", server, dataset, options, Preflight(), "sqlite")
    server_errors.setdefault("blogapi (sqlite)", []).extend(server.log_errors())
    return runs


WORKERS_SCENARIOS = ("post", "posts_page", "mix")


def workers_rounds(
    dataset: PostgresDataset, options: Options, secret_key: str, server_errors: dict[str, list[str]]
) -> dict[str, Any]:
    """`blogapi serve --workers 1` and `--workers 2` side by side: alternating rounds, ratios per round.

    The order flips every round (1 2, 2 1, ...), so a drift of the machine favours neither.
    """
    scenarios = tuple(name for name in WORKERS_SCENARIOS if name in options.scenarios) or ("post",)
    subset = replace(options, scenarios=scenarios)
    rounds: list[dict[str, dict[str, Run]]] = []
    for number in range(1, options.workers_rounds + 1):
        by_workers: dict[str, dict[str, Run]] = {}
        for workers in (1, 2) if number % 2 else (2, 1):
            label = f"workers={workers}"
            with Server(
                blogapi_spec(dataset, secret_key, workers), f"round{number}-workers{workers}"
            ) as server:
                by_workers[label] = run_scenarios("blogapi", server, dataset, subset, Preflight(), label)
            server_errors.setdefault(f"blogapi (serve --workers {workers})", []).extend(server.log_errors())
        rounds.append(by_workers)
    summary: dict[str, Any] = {}
    for scenario in scenarios:
        ratios = [round_["workers=2"][scenario].rps / round_["workers=1"][scenario].rps for round_ in rounds]
        summary[scenario] = {
            "rps_1": statistics.median(round_["workers=1"][scenario].rps for round_ in rounds),
            "rps_2": statistics.median(round_["workers=2"][scenario].rps for round_ in rounds),
            "ratio": round(statistics.median(ratios), 3),
            "ratios_by_round": [round(ratio, 3) for ratio in ratios],
            "cpu_1": _median(round_["workers=1"][scenario].cpu_ms_per_request for round_ in rounds),
            "cpu_2": _median(round_["workers=2"][scenario].cpu_ms_per_request for round_ in rounds),
            "other_cores": _median(
                run.other_cores
                for round_ in rounds
                for run in (round_["workers=1"][scenario], round_["workers=2"][scenario])
            ),
        }
    return {
        "summary": summary,
        "rounds": [
            {label: {name: asdict(run) for name, run in runs.items()} for label, runs in round_.items()}
            for round_ in rounds
        ],
    }


# -- PgBouncer beside a direct connection --------------------------------------------------

PGBOUNCER_SCENARIOS = WORKERS_SCENARIOS
PGBOUNCER_SCRIPT = BENCH.parent / "deploy" / "pgbouncer.sh"
POOLER_MODES = ("direct", "pgbouncer")
POOLER_TITLES = {"direct": "direct to PostgreSQL", "pgbouncer": "through PgBouncer"}


def pgbouncer_executable() -> str:
    """Where deploy/pgbouncer.sh finds PgBouncer (Debian's package installs it in /usr/sbin)."""
    return os.environ.get("PGBOUNCER_BIN") or shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def pgbouncer_missing() -> str | None:
    """Why the PgBouncer part cannot run on this machine, or None when it can."""
    executable = pgbouncer_executable()
    if not os.access(executable, os.X_OK):
        return f"no PgBouncer at {executable}: `make deploy-tools` installs Debian's pgbouncer"
    return None


class PgBouncer:
    """deploy/pgbouncer.sh's PgBouncer (transaction pooling) on 127.0.0.1:`port`, stopped on exit.

    It fronts the benchmark's PostgreSQL, and is the project's own: the template and script
    an operator uses (`make pgbouncer-start`), on a port of the runner's.
    """

    def __init__(self, postgres_url: str, port: int, label: str) -> None:
        url = make_url(postgres_url)
        self.port = port
        self.directory = Path(f"/tmp/blogapi-pgbouncer-{port}")  # noqa: S108  (the script's default)
        users = dict.fromkeys([url.username or "root", "root", "postgres"])  # listed in its auth_file
        self.env = {
            **os.environ,
            "PGBOUNCER_PORT": str(port),
            "PGBOUNCER_DIR": str(self.directory),
            "PGBOUNCER_UPSTREAM_HOST": url.host or "127.0.0.1",
            "PGBOUNCER_UPSTREAM_PORT": str(url.port or 5432),
            "PGBOUNCER_USERS": " ".join(users),
        }
        self.url = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        self.log = LOGS / f"{label}.log"
        self.pid: int | None = None

    def _script(self, command: str) -> None:
        run_command([str(PGBOUNCER_SCRIPT), command], self.env, self.log, timeout=60)

    def __enter__(self) -> PgBouncer:
        status = subprocess.run(  # noqa: S603  (our own script)
            [str(PGBOUNCER_SCRIPT), "status"], env=self.env, capture_output=True, check=False, timeout=30
        )
        if status.returncode == 0:  # its settings would be someone else's: measure only our own
            raise BenchError(
                f"a PgBouncer already runs on port {self.port}: stop it"
                f" (`PGBOUNCER_PORT={self.port} deploy/pgbouncer.sh stop`) or choose --pgbouncer-port"
            )
        self._script("start")
        self.pid = int((self.directory / "pgbouncer.pid").read_text())
        return self

    def __exit__(self, *_exc: object) -> None:
        self._script("stop")
        self.pid = None

    def settings(self) -> dict[str, str]:
        """The settings the script wrote into its pgbouncer.ini, and PgBouncer's version."""
        ini = (self.directory / "pgbouncer.ini").read_text()
        found = dict(re.findall(r"^(\w+) = (\S+)$", ini, re.MULTILINE))
        version = subprocess.run(  # noqa: S603
            [pgbouncer_executable(), "--version"], capture_output=True, text=True, check=False
        ).stdout
        return {
            "version": version.splitlines()[0].removeprefix("PgBouncer ") if version else "?",
            **{name: found.get(name, "?") for name in ("pool_mode", "default_pool_size", "max_client_conn")},
        }


def pooler_spec(dataset: Dataset, secret_key: str, pgbouncer: PgBouncer | None) -> AppSpec:
    """`blogapi serve`, one worker, on PostgreSQL itself or through the PgBouncer."""
    spec = blogapi_spec(dataset, secret_key)
    if pgbouncer is None:
        return replace(spec, env={**spec.env, "DATABASE_POOLER": "none"})
    return replace(spec, env={**spec.env, "DATABASE_URL": pgbouncer.url, "DATABASE_POOLER": "pgbouncer"})


def pgbouncer_summary(rounds: list[dict[str, dict[str, Run]]]) -> dict[str, Any]:
    """Per scenario: medians over rounds of each mode's figures; the ratio is taken within each round."""
    summary: dict[str, Any] = {}
    for scenario in rounds[0]["direct"]:
        direct = [round_["direct"][scenario] for round_ in rounds]
        pooled = [round_["pgbouncer"][scenario] for round_ in rounds]
        ratios = [through.rps / alone.rps for alone, through in zip(direct, pooled, strict=True)]
        summary[scenario] = {
            "ratio": round(statistics.median(ratios), 3),
            "ratios_by_round": [round(ratio, 3) for ratio in ratios],
            "other_cores": _median(run.other_cores for run in (*direct, *pooled)),
            **{
                mode: {
                    "rps": statistics.median(run.rps for run in runs),
                    "p50_ms": statistics.median(run.p50_ms for run in runs),
                    "p99_ms": statistics.median(run.p99_ms for run in runs),
                    "cpu_ms_per_request": _median(run.cpu_ms_per_request for run in runs),
                    "db_cpu_ms_per_request": _median(run.db_cpu_ms_per_request for run in runs),
                    "pooler_cpu_ms_per_request": _median(run.pooler_cpu_ms_per_request for run in runs),
                    "non2xx": sum(run.non2xx for run in runs),
                    "socket_errors": sum(run.socket_errors for run in runs),
                }
                for mode, runs in (("direct", direct), ("pgbouncer", pooled))
            },
        }
    return summary


def pgbouncer_rounds(
    dataset: PostgresDataset, options: Options, secret_key: str, server_errors: dict[str, list[str]]
) -> dict[str, Any]:
    """blogapi direct to PostgreSQL and through PgBouncer side by side: alternating rounds, ratios per round.

    The order flips every round (direct first, then PgBouncer first, ...). PgBouncer runs only
    while its blogapi does, so its idle server connections neither sit among the direct
    server's backends nor carry over from one round to the next. Both servers must answer
    each scenario's first request alike.
    """
    missing = pgbouncer_missing()
    if missing is not None:
        print(f"  skipped: {missing}", flush=True)
        return {"skipped": missing}
    scenarios = tuple(name for name in PGBOUNCER_SCENARIOS if name in options.scenarios) or ("post",)
    subset = replace(options, scenarios=scenarios)
    preflight = Preflight()
    rounds: list[dict[str, dict[str, Run]]] = []
    connections: dict[str, list[int]] = {mode: [] for mode in POOLER_MODES}
    settings: dict[str, str] = {}
    for number in range(1, options.pgbouncer_rounds + 1):
        by_mode: dict[str, dict[str, Run]] = {}
        for mode in POOLER_MODES if number % 2 else POOLER_MODES[::-1]:
            label = f"round{number}-{mode}"
            with ExitStack() as stack:
                pgbouncer = None
                if mode == "pgbouncer":
                    pgbouncer = stack.enter_context(
                        PgBouncer(options.postgres_url, options.pgbouncer_port, f"{label}-pgbouncer")
                    )
                    settings = pgbouncer.settings()
                spec = pooler_spec(dataset, secret_key, pgbouncer)
                server = stack.enter_context(Server(spec, label, pgbouncer.pid if pgbouncer else None))
                by_mode[mode] = run_scenarios("blogapi", server, dataset, subset, preflight, mode)
                # After the last scenario: blogapi's pool (direct), or PgBouncer's server connections.
                connections[mode].append(len(backends_of(dataset.name)))
            server_errors.setdefault(f"blogapi ({POOLER_TITLES[mode]})", []).extend(server.log_errors())
        rounds.append(by_mode)
    summary = pgbouncer_summary(rounds)
    return {
        "summary": summary,
        "connections": connections,
        "pgbouncer": settings,
        "pool_size": os.environ.get("POOL_SIZE", str(Settings.model_fields["pool_size"].default)),
        "rounds": [
            {mode: {name: asdict(run) for name, run in runs.items()} for mode, runs in round_.items()}
            for round_ in rounds
        ],
    }


def soak(
    dataset: PostgresDataset, options: Options, secret_key: str, server_errors: dict[str, list[str]]
) -> dict[str, Any]:
    spec = app_specs(dataset, secret_key)["blogapi"]
    with Server(spec, "soak-blogapi") as server:
        load = Load("mix", dataset.posts, dataset.users, auth_for("blogapi", server), options.connections)
        wrk(server.url, load, max(options.warmup, 5), options.wrk_threads)
        rss_start = rss_mib(server.pid)
        print(f"  soak: {options.soak_seconds} s of the mix", flush=True)
        run = wrk(server.url, load, options.soak_seconds, options.wrk_threads)
        server.quiesce()
        busy, connections = dataset.busy_connections("blogapi")
        rss_end = rss_mib(server.pid)
    server_errors.setdefault("blogapi (soak)", []).extend(server.log_errors())
    dataset.cleanup()
    result = {
        **asdict(run),
        "rss_start_mib": round(rss_start, 1),
        "rss_end_mib": round(rss_end, 1),
        "busy_connections_after": busy,
        "connections_after": connections,
        "ok": run.non2xx == 0 and run.socket_errors == 0 and busy == 0,
    }
    print(
        f"  soak: {describe(run)}  RSS {rss_start:.0f} -> {rss_end:.0f} MiB  busy connections after: {busy}",
        flush=True,
    )
    return result


AUTH_CONNECTIONS = 8  # twice blogapi's HASH_CONCURRENCY: the hash pool is always busy, the DB pool is not


def auth_runs(
    dataset: PostgresDataset, options: Options, secret_key: str, server_errors: dict[str, list[str]]
) -> dict[str, Run]:
    """Sign-up and login cost; then GETs alone, and GETs during logins (fewer and more than the pool)."""
    spec = app_specs(dataset, secret_key)["blogapi"]
    seconds, threads = options.auth_seconds, options.wrk_threads
    runs: dict[str, Run] = {}

    def load(scenario: str, connections: int) -> Load:
        return Load(scenario, dataset.posts, dataset.users, "none:", connections)

    def report(name: str) -> None:
        print(f"  {'auth':>9} {'blogapi':>8} {name:>11}: {describe(runs[name])}", flush=True)

    with Server(spec, "auth-blogapi") as server:
        for scenario in ("signup", "login"):
            runs[scenario] = measure(server, load(scenario, AUTH_CONNECTIONS), seconds, 2, threads)
            server.quiesce(timeout=60)  # hashes queued when wrk stopped are still running
            report(scenario)
        runs["get_alone"] = measure(
            server, load("post", options.connections), seconds, options.warmup, threads
        )
        report("get_alone")
        for logins in (AUTH_CONNECTIONS, options.connections):
            burst = start_wrk(server.url, load("login", logins), seconds + 2, threads)
            try:
                time.sleep(1)  # the logins are under way before the GETs start, and outlast them
                runs[f"get_during_{logins}_logins"] = wrk(
                    server.url, load("post", options.connections), seconds, threads
                )
            finally:
                runs[f"{logins}_logins_during_gets"] = finish_wrk(burst, seconds + 2)
            server.quiesce(timeout=60)
            report(f"get_during_{logins}_logins")
            report(f"{logins}_logins_during_gets")
    server_errors.setdefault("blogapi (auth)", []).extend(server.log_errors())
    dataset.cleanup()
    return runs


# -- the lists at scale --------------------------------------------------------------------

RARE_TAG = "bench-rare"  # linked by the runner to the oldest posts: the far end of any newest-first walk
RARE_TAG_POSTS = 5
UNKNOWN_TAG = "no-such-tag"
ABSENT_TERM = "qzxjvk"  # in no title (checked): no Faker word holds "qzx"
# A term of common trigrams that matches (next to) nothing: "ter" ends and "ing" starts many
# a word, so the text index finds thousands of candidates at 1M, which the folded title then
# rejects. What a lookup costs is bounded by its candidates, not its matches (search.py).
TRIGRAMS_TERM = "ter ing"
DEEP_POSITION = 500_000
HAMMER_CLIENTS = 8
# Each hammering client pauses between requests: 8 clients send at most 40 requests/s in all,
# a small share of one worker when each list costs about a page. Unpaced, 8 clients beside 8
# would take half the worker whatever the lists cost, and the ratio would measure wrk.
HAMMER_PAUSE_MS = 200
SCALE_TITLES = {
    "post": "GET /posts/{id} (the reference)",
    "user_posts": "GET /users/{id}/posts (authors uniform)",
    "tags": "GET /tags",
    "tag_rare": f"GET /posts?tag= rare ({RARE_TAG_POSTS} oldest posts)",
    "tag_unknown": "GET /posts?tag= unknown",
    "q_rare": "GET /posts?q= rare term",
    "q_absent": "GET /posts?q= absent term",
    "q_common": "GET /posts?q= common term",
    "q_trigrams": f"GET /posts?q= `{TRIGRAMS_TERM}` (common trigrams, few matches)",
    "deep_page": "GET /posts?cursor= 500,000 deep (halfway below 1M)",
    "posts_page": "GET /posts (first page)",
    "hammered": f"first page while {HAMMER_CLIENTS} paced clients hammer the other lists",
}
SCALE_SCENARIOS = tuple(SCALE_TITLES)  # measured in this order; posts_page right before hammered
# Lists held to "at most 2x their cost relative to GET /posts/{id} at the largest size as at
# the smallest". A common term may cost in proportion to its matches, under a cap (issue 16).
TARGET_LISTS = (
    "user_posts",
    "tags",
    "tag_rare",
    "tag_unknown",
    "q_rare",
    "q_absent",
    "deep_page",
    "posts_page",
)
# A common term may cost in proportion to its matches under the cap, and a term of common
# trigrams in proportion to its candidates (search.py): measured, without a target.
UNTARGETED_LISTS = ("q_common", "q_trigrams")
# The lists the paced clients loop over (as in the runs before q_trigrams was measured).
HAMMERING = ("user_posts", "tags", "tag_rare", "tag_unknown", "q_rare", "q_absent", "q_common", "deep_page")
MAX_GROWTH = 2.0
MIN_HAMMERED = 0.8


def size_label(posts: int) -> str:
    return f"{posts // 1_000_000}M" if posts % 1_000_000 == 0 else f"{posts // 1000}k"


def scale_url(base_url: str, posts: int) -> str:
    url = make_url(base_url)
    return url.set(
        database=f"{url.database or 'blogapi_bench'}_{size_label(posts).lower()}"
    ).render_as_string(hide_password=False)


@dataclass(frozen=True)
class Fixture:
    """What the scale scenarios ask for, found (or made: the rare tag) in one data set."""

    rare_term: str
    rare_term_matches: int
    common_term: str
    common_term_matches: int
    trigrams_term_matches: int
    deep_position: int
    deep_after: tuple[str, int]  # (created_at, id) of the row the deep page starts after
    deep_first_id: int
    author_id: int  # the author of the EXPLAIN (the load draws authors uniformly)


def _sql(dataset: Dataset, statement: str, *args: Any) -> list[Sequence[Any]]:
    """A statement in PostgreSQL's form ($n, "user") on either server backend."""
    if isinstance(dataset, MariadbDataset):
        mysql = re.sub(r"\$\d+", "%s", statement).replace('"user"', "`user`")
        return list(dataset.query(mysql, *args))
    return list(pg(_asyncpg_dsn(dataset.url), statement, *args))


def scale_fixture(dataset: Dataset) -> Fixture:
    mariadb = isinstance(dataset, MariadbDataset)
    ignore, conflict = ("IGNORE ", "") if mariadb else ("", " ON CONFLICT DO NOTHING")
    _sql(dataset, f"INSERT {ignore}INTO tag (name) VALUES ($1){conflict}", RARE_TAG)  # noqa: S608  (constants)
    _sql(
        dataset,
        f"INSERT {ignore}INTO post_tag (post_id, tag_id, created_at)"  # noqa: S608  (constants)
        " SELECT oldest.id, tag.id, oldest.created_at"
        " FROM (SELECT id, created_at FROM post ORDER BY created_at, id LIMIT $1) AS oldest"
        f" JOIN tag ON tag.name = $2{conflict}",
        RARE_TAG_POSTS,
        RARE_TAG,
    )
    _sql(dataset, RECOUNT_TAGS + " WHERE name = $1", RARE_TAG)
    title = str(_sql(dataset, "SELECT title FROM post ORDER BY created_at, id LIMIT 1")[0][0])
    words = title.lower().split()
    rare_term, common_term = " ".join(words[:2]), words[0]

    def matches(term: str) -> int:
        return int(_sql(dataset, "SELECT count(*) FROM post WHERE lower(title) LIKE $1", f"%{term}%")[0][0])

    if matches(ABSENT_TERM):
        raise BenchError(f"{dataset.url}: the absent term {ABSENT_TERM!r} is in a title")
    position = min(DEEP_POSITION, dataset.posts // 2)
    rows = _sql(
        dataset,
        "SELECT created_at, id FROM post ORDER BY created_at DESC, id DESC LIMIT 2 OFFSET $1",
        position - 1,
    )
    created_at = rows[0][0] if rows[0][0].tzinfo else rows[0][0].replace(tzinfo=UTC)
    return Fixture(
        rare_term=rare_term,
        rare_term_matches=matches(rare_term),
        common_term=common_term,
        common_term_matches=matches(common_term),
        trigrams_term_matches=matches(TRIGRAMS_TERM),
        deep_position=position,
        deep_after=(created_at.astimezone(UTC).isoformat(), int(rows[0][1])),
        deep_first_id=int(rows[1][1]),
        author_id=dataset.users // 2,
    )


def scale_paths(fixture: Fixture, secret_key: str) -> dict[str, str]:
    """Each list scenario's request; the deep cursor is signed as the server signs it."""
    cursor = CursorCodec(secret_key.encode()).encode("posts", list(fixture.deep_after))
    lists = "/api/v1/posts?limit=20"
    return {
        "user_posts": f"/api/v1/users/{fixture.author_id}/posts?limit=20",
        "tags": "/api/v1/tags?limit=20",
        "tag_rare": f"{lists}&tag={RARE_TAG}",
        "tag_unknown": f"{lists}&tag={UNKNOWN_TAG}",
        "q_rare": f"{lists}&q={quote(fixture.rare_term)}",
        "q_absent": f"{lists}&q={ABSENT_TERM}",
        "q_common": f"{lists}&q={quote(fixture.common_term)}",
        "q_trigrams": f"{lists}&q={quote(TRIGRAMS_TERM)}",
        "deep_page": f"{lists}&cursor={quote(cursor)}",
        "posts_page": lists,
    }


def scale_preflight(server: Server, scenario: str, path: str, fixture: Fixture) -> dict[str, Any]:
    """One request alone: its status, items and time.

    A wrong answer stops the run, and so does a 4xx (the runner asked wrongly). A 5xx is a
    finding (blogapi's statement time limit answers a scan with a 503): it is recorded.
    """
    started = time.monotonic()
    try:
        status, body = http(server.url + path, timeout=120)
    except OSError as error:  # a timeout: recorded, and the load will show it
        return {"status": None, "ms": round((time.monotonic() - started) * 1000, 1), "error": str(error)}
    elapsed = round((time.monotonic() - started) * 1000, 1)
    if status < 500 and status != 200:
        raise BenchError(f"{scenario}: {path} answered {status}: {str(body)[:300]}")
    if status != 200:
        problem = body if isinstance(body, str) else json.dumps(body)
        match = re.search(r'"type":\s*"[^"]*/([^"/]+)"', problem)
        return {"status": status, "ms": elapsed, "problem": match.group(1) if match else problem[:100]}
    items = body["items"]
    expected = {"tag_rare": RARE_TAG_POSTS, "tag_unknown": 0, "q_absent": 0, "posts_page": 20}
    if scenario in expected and len(items) != expected[scenario]:
        raise BenchError(f"{scenario}: {path} gave {len(items)} items, not {expected[scenario]}")
    if scenario == "deep_page" and items[0]["id"] != fixture.deep_first_id:
        raise BenchError(f"deep_page starts at post {items[0]['id']}, not {fixture.deep_first_id}")
    return {"status": status, "ms": elapsed, "items": len(items)}


def scale_server_run(
    dataset: Dataset, fixture: Fixture, options: Options, secret_key: str, label: str
) -> tuple[dict[str, Any], list[str]]:
    """Every scale scenario on one `blogapi serve` over one data set."""
    paths = scale_paths(fixture, secret_key)
    seconds, warmup, threads = options.scale_duration, options.scale_warmup, options.wrk_threads

    def load(scenario: str, connections: int = options.scale_connections) -> Load:
        if scenario in ("post", "user_posts"):
            return Load(scenario, dataset.posts, dataset.users, "none:", connections)
        return Load("paths", dataset.posts, dataset.users, "none:", connections, (paths[scenario],))

    runs: dict[str, Run] = {}
    preflight: dict[str, Any] = {}
    cancelled: dict[str, int] = {}
    with Server(blogapi_spec(dataset, secret_key), label) as server:
        for scenario, path in paths.items():
            preflight[scenario] = scale_preflight(server, scenario, path, fixture)
            dataset.settle()
        for scenario in SCALE_SCENARIOS[:-1]:
            runs[scenario] = measure(server, load(scenario), seconds, warmup, threads)
            server.quiesce()
            cancelled[scenario] = dataset.settle()
            print(f"  {label:>22} {scenario:>11}: {describe(runs[scenario])}", flush=True)
        others = Load(
            "paths",
            dataset.posts,
            dataset.users,
            "none:",
            HAMMER_CLIENTS,
            tuple(paths[n] for n in HAMMERING),
            HAMMER_PAUSE_MS,
        )
        burst = start_wrk(server.url, others, seconds + 2, threads)
        try:
            time.sleep(1)  # the hammering is under way before the first page is measured, and outlasts it
            runs["hammered"] = wrk(server.url, load("posts_page"), seconds, threads)
        finally:
            runs["hammer"] = finish_wrk(burst, seconds + 2)
        server.quiesce()
        cancelled["hammered"] = dataset.settle()
        print(f"  {label:>22} {'hammered':>11}: {describe(runs['hammered'])}", flush=True)
        print(f"  {label:>22} {'(hammer)':>11}: {describe(runs['hammer'])}", flush=True)
    result = {
        "runs": {name: asdict(run) for name, run in runs.items()},
        "preflight": preflight,
        "cancelled_after": {name: count for name, count in cancelled.items() if count},
    }
    return result, server.log_errors()


def _cost(reference: float, rps: float) -> float | None:
    """A list's cost in GET /posts/{id}'s: how many of those one list request is worth."""
    return round(reference / rps, 3) if rps > 0 else None


def _ok_rps(run: dict[str, Any]) -> float:
    """Successful responses a second: a 503 (the statement time limit) is no page served."""
    seconds: float = run["seconds"]
    return (run["requests"] - run["non2xx"]) / seconds if seconds > 0 else 0.0


def scale_summary(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per backend and size: medians over rounds of each list's cost (within its run) and the targets."""
    summary: dict[str, Any] = {}
    for backend, sizes in results.items():
        by_size: dict[str, Any] = {}
        for size, rounds in sizes.items():
            scenarios: dict[str, Any] = {}
            for scenario in SCALE_SCENARIOS:
                runs = [round_["runs"][scenario] for round_ in rounds]
                costs = [
                    _cost(_ok_rps(round_["runs"]["post"]), _ok_rps(round_["runs"][scenario]))
                    for round_ in rounds
                ]
                known = [cost for cost in costs if cost is not None]
                scenarios[scenario] = {
                    "rps": statistics.median(_ok_rps(run) for run in runs),
                    "p50_ms": statistics.median(run["p50_ms"] for run in runs),
                    "p99_ms": statistics.median(run["p99_ms"] for run in runs),
                    "cost": statistics.median(known) if len(known) == len(costs) else None,
                    "costs_by_round": costs,
                    "alone_ms": _median(round_["preflight"].get(scenario, {}).get("ms") for round_ in rounds),
                    "alone_failed": sorted(
                        {
                            f"{alone['status']} {alone.get('problem', '')}".strip()
                            for round_ in rounds
                            if (alone := round_["preflight"].get(scenario, {})).get("status", 200) != 200
                        }
                    ),
                    "non2xx": sum(run["non2xx"] for run in runs),
                    "socket_errors": sum(run["socket_errors"] for run in runs),
                    "other_cores": _median(run["other_cores"] for run in runs),
                }
            hammered = [
                _ok_rps(round_["runs"]["hammered"]) / _ok_rps(round_["runs"]["posts_page"])
                for round_ in rounds
                if _ok_rps(round_["runs"]["posts_page"]) > 0
            ]
            by_size[size] = {
                "scenarios": scenarios,
                "hammered_ratio": round(statistics.median(hammered), 3) if hammered else None,
                "hammered_by_round": [round(ratio, 3) for ratio in hammered],
                "hammer_rps": statistics.median(_ok_rps(round_["runs"]["hammer"]) for round_ in rounds),
                "hammer_non2xx": sum(round_["runs"]["hammer"]["non2xx"] for round_ in rounds),
            }
        targets: dict[str, Any] = {}
        labels = sorted(by_size, key=lambda label: int(label.split(":")[0]))
        small, large = labels[0], labels[-1]
        for scenario in (*TARGET_LISTS, *UNTARGETED_LISTS):
            before = by_size[small]["scenarios"][scenario]["cost"]
            after = by_size[large]["scenarios"][scenario]["cost"]
            growth = round(after / before, 2) if before and after else None
            targets[scenario] = {
                "cost_small": before,
                "cost_large": after,
                "growth": growth,
                "pass": None
                if scenario in UNTARGETED_LISTS or small == large
                else (growth is not None and growth <= MAX_GROWTH),
            }
        ratio = by_size[large]["hammered_ratio"]
        targets["hammered"] = {"ratio": ratio, "pass": ratio is not None and ratio >= MIN_HAMMERED}
        summary[backend] = {"sizes": by_size, "targets": targets, "small": small, "large": large}
    return summary


async def _explain_lists(dataset: Dataset, paths: dict[str, str], secret_key: str) -> dict[str, Any]:
    """The statements blogapi runs for each list (captured in process), with their plans."""
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        captured.append((statement, parameters))

    # The statement time limit at the EXPLAIN's own: a list that times out under load still
    # shows the plan that made it slow.
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=dataset.url,
        environment="production",
        secret_key=secret_key,
        statement_timeout_ms=EXPLAIN_LIMIT_SECONDS * 1000,
    )
    # STRAIGHT_JOIN too: MariaDB's text index lookup reaches post (or user) by one (search.py).
    tables = re.compile(r'\b(FROM|JOIN|STRAIGHT_JOIN)\s+[`"]?(post|post_tag|tag|user)\b', re.IGNORECASE)
    plans: dict[str, Any] = {}
    event.listen(Engine, "before_cursor_execute", capture)
    try:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        async with (
            LifespanManager(app),
            httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
        ):
            await client.get("/health/ready")
            for scenario, path in paths.items():
                captured.clear()
                response = await client.get(path, timeout=None)
                plans[scenario] = []
                for statement, parameters in list(captured):
                    if statement.lstrip().upper().startswith(("SELECT", "WITH")) and tables.search(statement):
                        try:
                            plan = await _plan(dataset, statement, parameters)
                        except Exception as error:
                            plan = f"(no plan: {error.__class__.__name__}: {error})"
                        if response.status_code != 200:
                            plan = f"(the request answered {response.status_code})\n{plan}"
                        plans[scenario].append({"statement": statement, "plan": plan})
    finally:
        event.remove(Engine, "before_cursor_execute", capture)
    return plans


EXPLAIN_LIMIT_SECONDS = 120


async def _plan(dataset: Dataset, statement: str, parameters: Any) -> str:
    """PostgreSQL: EXPLAIN ANALYZE; MariaDB: ANALYZE (the plan with the rows it really read)."""
    arguments = tuple(parameters or ())
    if isinstance(dataset, MariadbDataset):
        connection = dataset.connect(dataset.name)
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"SET SESSION max_statement_time = {EXPLAIN_LIMIT_SECONDS}")
                try:
                    cursor.execute("ANALYZE " + statement, arguments)
                    prefix = ""
                except pymysql.MySQLError as error:
                    cursor.execute("EXPLAIN " + statement, arguments)
                    prefix = f"(ANALYZE failed: {error}; EXPLAIN only)\n"
                names = [column[0] for column in cursor.description or ()]
                rows = [
                    names,
                    *[["" if value is None else str(value) for value in row] for row in cursor.fetchall()],
                ]
        finally:
            connection.close()
        widths = [max(len(row[index]) for row in rows) for index in range(len(names))]
        return prefix + "\n".join(
            "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        )
    connection = await asyncpg.connect(_asyncpg_dsn(dataset.url))
    try:
        await connection.execute(f"SET statement_timeout = '{EXPLAIN_LIMIT_SECONDS}s'")
        try:
            rows = await connection.fetch("EXPLAIN (ANALYZE, BUFFERS) " + statement, *arguments)
            prefix = ""
        except asyncpg.QueryCanceledError:
            rows = await connection.fetch("EXPLAIN " + statement, *arguments)
            prefix = f"(EXPLAIN ANALYZE exceeded {EXPLAIN_LIMIT_SECONDS} s; EXPLAIN only)\n"
        return prefix + "\n".join(row[0] for row in rows)
    finally:
        await connection.close()


def scale_runs(options: Options, secret_key: str, server_errors: dict[str, list[str]]) -> dict[str, Any]:
    """The lists at each size on each backend, in rounds; fixtures, then plans at the largest size."""
    datasets: dict[tuple[str, int], Dataset] = {}
    fixtures: dict[tuple[str, int], Fixture] = {}
    versions_: dict[str, str] = {}
    for backend in options.scale_backends:
        for posts in options.scale_sizes:
            base = options.postgres_url if backend == "postgresql" else options.mariadb_url
            kind = PostgresDataset if backend == "postgresql" else MariadbDataset
            dataset = kind(scale_url(base, posts), posts // 10, 10)
            print(f"  {backend} {size_label(posts)}: preparing {dataset.url}", flush=True)
            dataset.prepare()
            datasets[backend, posts] = dataset
            fixtures[backend, posts] = scale_fixture(dataset)
            print(f"    {fixtures[backend, posts]}", flush=True)
            versions_[backend] = dataset.server_version()  # type: ignore[attr-defined]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        backend: {f"{posts}:{size_label(posts)}": [] for posts in options.scale_sizes}
        for backend in options.scale_backends
    }
    order = list(datasets)
    for number in range(1, options.scale_rounds + 1):
        for backend, posts in order if number % 2 else reversed(order):
            label = f"scale{number}-{backend}-{size_label(posts)}"
            run, errors = scale_server_run(
                datasets[backend, posts], fixtures[backend, posts], options, secret_key, label
            )
            results[backend][f"{posts}:{size_label(posts)}"].append(run)
            server_errors.setdefault(f"blogapi ({backend}, {size_label(posts)} posts)", []).extend(errors)
    # Kept before the plans, so a failure there loses no measurement.
    (RESULTS / "scale-partial.json").write_text(json.dumps(results, indent=2) + "\n")
    plans: dict[str, Any] = {}
    largest = max(options.scale_sizes)
    for backend in options.scale_backends:
        print(f"  EXPLAIN at {size_label(largest)} posts on {backend}", flush=True)
        dataset = datasets[backend, largest]
        paths = scale_paths(fixtures[backend, largest], secret_key)
        plans[backend] = asyncio.run(_explain_lists(dataset, paths, secret_key))
        dataset.settle()
    return {
        "fixtures": {
            f"{backend} {size_label(posts)}": asdict(fixture)
            for (backend, posts), fixture in fixtures.items()
        },
        "versions": versions_,
        "results": results,
        "summary": scale_summary(results),
        "plans": plans,
        "plans_at": size_label(largest),
        "options": {key: value for key, value in asdict(options).items() if key.startswith("scale")},
    }


# -- the report ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    meminfo = Path("/proc/meminfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    memory = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "ram_gib": round(int(memory.group(1)) / 1024**2, 1) if memory else None,
        "kernel": platform.release(),
    }


def blogapi_source() -> str:
    """Which blogapi the servers import (PYTHONPATH may point at an exported revision)."""
    spec = importlib.util.find_spec("blogapi")
    if spec is None or spec.origin is None:
        raise BenchError("blogapi is not importable: run `make install`")
    package = Path(spec.origin).parent
    git = subprocess.run(  # noqa: S603
        [shutil.which("git") or "git", "-C", str(package), "describe", "--always", "--dirty", "--abbrev=12"],
        capture_output=True,
        text=True,
        check=False,
    )
    # A revision, never a path: BENCH_REVISION names an exported one (PYTHONPATH=/tmp/rev/src).
    revision = os.environ.get("BENCH_REVISION") or (
        f"git {git.stdout.strip()}" if git.returncode == 0 else "not a git checkout (set BENCH_REVISION)"
    )
    return f"{metadata.version('blogapi')}, {revision}"


def versions(dataset: PostgresDataset) -> dict[str, str]:
    packages = ("fastapi", "starlette", "pydantic", "sqlalchemy", "asyncpg", "aiosqlite", "uvicorn", "uvloop")
    wrk_version = subprocess.run(  # noqa: S603
        [shutil.which("wrk") or "wrk", "-v"], capture_output=True, text=True, check=False
    ).stdout.split(" [")[0]
    return {
        "python": platform.python_version(),
        **{package: metadata.version(package) for package in (*packages, "httptools")},
        "postgresql": dataset.server_version(),
        "sqlite": sqlite3.sqlite_version,
        "wrk": wrk_version.removeprefix("wrk ").strip(),
    }


def _loads(values: Sequence[float]) -> str:
    return " / ".join(f"{value:.1f}" for value in values)


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _errors(non2xx: int, socket_errors: int) -> str:
    return str(non2xx) + (f" (+{socket_errors} socket)" if socket_errors else "")


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _run_rows(runs: dict[str, Run]) -> list[str]:
    rows = [
        "| scenario | req/s | p50 ms | p99 ms | app CPU ms/req | DB CPU ms/req | other load | non-2xx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in runs.items():
        rows.append(
            f"| {TITLES.get(name, name)} | {run.rps:.0f} | {_ms(run.p50_ms)} | {_ms(run.p99_ms)}"
            f" | {_number(run.cpu_ms_per_request)} | {_number(run.db_cpu_ms_per_request)}"
            f" | {_number(run.other_cores, 1)} | {_errors(run.non2xx, run.socket_errors)} |"
        )
    return rows


def _main_header(options: dict[str, Any]) -> list[str]:
    return [
        "",
        "## blogapi and the baselines",
        "",
        f"- Data: `blogapi seed --users {options['users']} --posts-per-user {options['posts_per_user']}"
        " --seed 1` (PostgreSQL database `blogapi_bench`); ids drawn uniformly from the seeded ranges.",
        f"- Load: wrk, {options['connections']} connections, {options['wrk_threads']} thread(s),"
        f" {options['duration']} s measured after {options['warmup']} s of warm-up, per scenario;"
        f" {options['rounds']} alternating rounds (blogapi, tutorial, raw); medians across rounds."
        " The ratio to raw is taken within each round.",
        "- blogapi runs as shipped, `blogapi serve` (one worker; uvicorn's defaults: uvloop, httptools,"
        f" access log on); the baselines under `uvicorn {' '.join(UVICORN_FLAGS)}`. raw's asyncpg pool"
        " does not reset sessions on release (no `RESET ALL` round trip, as blogapi's pool): raw stays"
        " the tightest bound, and blogapi's ratio includes its access log.",
        "- Columns: *app CPU* is the server's process tree and *DB CPU* the PostgreSQL backends of"
        " `blogapi_bench`, each per request; *other load* is the CPU (in cores) that everything else"
        " on the machine used meanwhile: above ~0.2, other work competed with the run.",
        "",
        "### Requests/s relative to raw and to the tutorial (median of per-round ratios)",
        "",
        "| scenario | blogapi / raw | tutorial / raw | blogapi / tutorial | raw req/s |",
        "|---|---:|---:|---:|---:|",
    ]


def _failures(statuses: list[str]) -> str:
    return "".join(f" ({status})" for status in statuses)


def _verdict(passed: bool | None) -> str:
    return "-" if passed is None else ("**pass**" if passed else "**FAIL**")


def _scale_lines(scale: dict[str, Any]) -> list[str]:
    summary, options = scale["summary"], scale["options"]
    lines = [
        "",
        "## The lists at scale (blogapi alone, `blogapi serve`, one worker)",
        "",
        f"- Data: `blogapi seed --users N/10 --posts-per-user 10 --seed 1` for N posts, in databases"
        " `<base>_10k`, `<base>_1m` (seeded once, reused while their rows are exactly the seeded ones);"
        f" plus the tag `{RARE_TAG}` on the {RARE_TAG_POSTS} oldest posts"
        " (the far end of a newest-first walk).",
        f"- Load: wrk, {options['scale_connections']} connections, {options['scale_duration']} s measured"
        f" after {options['scale_warmup']} s of warm-up per scenario; {options['scale_rounds']} round(s),"
        " the data sets in alternating order. Between scenarios the runner waits until no statement"
        " runs on the database (and cancels what runs on after 90 s).",
        "- *cost*: GET /posts/{id}'s successful (2xx) responses a second over the list's, within the"
        " same run (how many single posts one list request is worth; a 503 from the statement time"
        " limit serves no page); median over rounds. *alone*: one request with nothing else"
        " running, ms (and its status when not 200). *growth*: the cost at the largest size over the"
        " cost at the smallest;"
        f" target at most {MAX_GROWTH:g}x. The first page under hammering: its requests/s while"
        f" {HAMMER_CLIENTS} clients loop over the other lists (each pausing {HAMMER_PAUSE_MS} ms after"
        f" a response: at most {HAMMER_CLIENTS * 1000 // HAMMER_PAUSE_MS} requests/s in all), over its"
        f" requests/s just before; target at least {MIN_HAMMERED:g}x.",
        "- A common term has no target here: it may cost in proportion to its matches, under a"
        " documented cap (issue 16); nor a term of common trigrams, which costs in proportion to"
        " the candidates the text index finds for it (README, *Searching at scale*).",
        "- Server versions: "
        + ", ".join(f"{name} {version}" for name, version in scale["versions"].items())
        + ".",
        "",
        "Fixtures (terms found in the data; matches by `lower(title) LIKE`):",
        "",
        "| data set | rare term (matches) | common term (matches) | common trigrams (matches)"
        " | deep page after position |",
        "|---|---|---|---|---:|",
    ]
    for name, fixture in scale["fixtures"].items():
        lines.append(
            f"| {name} | `{fixture['rare_term']}` ({fixture['rare_term_matches']})"
            f" | `{fixture['common_term']}` ({fixture['common_term_matches']})"
            f" | `{TRIGRAMS_TERM}` ({fixture.get('trigrams_term_matches', '?')})"
            f" | {fixture['deep_position']:,} |"
        )
    for backend, data in summary.items():
        sizes = sorted(data["sizes"], key=lambda label: int(label.split(":")[0]))
        names = [label.split(":")[1] for label in sizes]
        lines += [
            "",
            f"### {backend}: targets",
            "",
            f"| list | cost at {names[0]} | cost at {names[-1]} | growth | target |",
            "|---|---:|---:|---:|---|",
        ]
        for scenario, target in data["targets"].items():
            if scenario == "hammered":
                continue
            lines.append(
                f"| {SCALE_TITLES[scenario]} | {_number(target['cost_small'])}"
                f" | {_number(target['cost_large'])}"
                f" | {_number(target['growth'])} | {_verdict(target['pass'])} |"
            )
        hammered = data["targets"]["hammered"]
        small_ratio = data["sizes"][sizes[0]]["hammered_ratio"]
        lines.append(
            f"| first page under hammering (ratio at {names[0]} / at {names[-1]}) | {_number(small_ratio)}"
            f" | {_number(hammered['ratio'])} | - | {_verdict(hammered['pass'])} |"
        )
        hammers = ", ".join(
            f"{name}: {data['sizes'][label]['hammer_rps']:.1f} req/s"
            f" ({data['sizes'][label]['hammer_non2xx']} non-2xx)"
            for label, name in zip(sizes, names, strict=True)
        )
        lines += ["", f"The hammering clients themselves got {hammers}."]
        lines += [
            "",
            f"### {backend}: per scenario",
            "",
            "| scenario | size | 2xx/s | cost | alone ms | p50 ms | p99 ms | non-2xx | other load |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for scenario in SCALE_SCENARIOS:
            for label, name in zip(sizes, names, strict=True):
                stats = data["sizes"][label]["scenarios"][scenario]
                lines.append(
                    f"| {SCALE_TITLES[scenario]} | {name} | {stats['rps']:.1f} | {_number(stats['cost'])}"
                    f" | {_number(stats['alone_ms'], 1)}{_failures(stats['alone_failed'])}"
                    f" | {_ms(stats['p50_ms'])} | {_ms(stats['p99_ms'])}"
                    f" | {_errors(stats['non2xx'], stats['socket_errors'])}"
                    f" | {_number(stats['other_cores'], 1)} |"
                )
    lines += [
        "",
        f"### Plans of the list statements at {scale['plans_at']} posts",
        "",
        "Each list request was sent once to blogapi in process; every SELECT it ran is shown with"
        " PostgreSQL's `EXPLAIN (ANALYZE, BUFFERS)` or MariaDB's `ANALYZE` (the plan with the rows"
        " really read: `r_rows`), each limited to"
        f" {EXPLAIN_LIMIT_SECONDS} s.",
    ]
    for backend, by_scenario in scale["plans"].items():
        lines += ["", f"#### {backend}"]
        for scenario, statements in by_scenario.items():
            lines += [
                "",
                f"<details><summary>{SCALE_TITLES[scenario]}: {len(statements)} statement(s)</summary>",
                "",
            ]
            for statement in statements:
                lines += [
                    "```sql",
                    statement["statement"].strip(),
                    "```",
                    "```",
                    statement["plan"],
                    "```",
                    "",
                ]
            lines.append("</details>")
    return lines


def _workers_lines(workers: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## `blogapi serve --workers 2` beside `--workers 1` (PostgreSQL, alternating rounds)",
        "",
        "Both as shipped (access log on). *ratio*: `--workers 2`'s requests/s over `--workers 1`'s,"
        " within each round; the median and each round's. On 2 cores shared with wrk and PostgreSQL,"
        " a second worker competes with them for the same cores.",
        "",
        "| scenario | req/s, 1 worker | req/s, 2 workers | ratio | by round | app CPU ms/req 1 / 2"
        " | other load |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for scenario, stats in workers["summary"].items():
        by_round = ", ".join(f"{ratio:.2f}" for ratio in stats["ratios_by_round"])
        lines.append(
            f"| {TITLES[scenario]} | {stats['rps_1']:.0f} | {stats['rps_2']:.0f} | {stats['ratio']:.2f}"
            f" | {by_round} | {_number(stats['cpu_1'])} / {_number(stats['cpu_2'])}"
            f" | {_number(stats['other_cores'], 1)} |"
        )
    return lines


def _pgbouncer_lines(part: dict[str, Any]) -> list[str]:
    lines = ["", "## blogapi through PgBouncer beside direct to PostgreSQL (alternating rounds)", ""]
    if "skipped" in part:
        return [*lines, f"Not measured: {part['skipped']}."]
    bouncer, connections = part["pgbouncer"], part["connections"]
    lines += [
        "Both `blogapi serve` as shipped (one worker, access log on, a pool of"
        f" `POOL_SIZE` {part['pool_size']}) on `blogapi_bench`: one on PostgreSQL itself, one"
        f" through PgBouncer {bouncer['version']} in {bouncer['pool_mode']} mode, started by"
        " `deploy/pgbouncer.sh` for its rounds alone (`default_pool_size`"
        f" {bouncer['default_pool_size']}, `max_client_conn` {bouncer['max_client_conn']}), with"
        " `DATABASE_POOLER=pgbouncer`: no prepared-statement caches, reads in a transaction,"
        " `SET LOCAL statement_timeout` in each (docs/scaling.md). The order flips every round."
        " *ratio*: requests/s through PgBouncer over direct, within each round; the median and"
        " each round's. CPU per request: *app* the server, *DB* the PostgreSQL backends of"
        " `blogapi_bench`, *PgBouncer* its process; *other load*: the CPU (in cores) everything"
        " else on the machine used meanwhile.",
        "",
        "| scenario | req/s direct | req/s PgBouncer | ratio | by round | p50 ms direct / PgBouncer"
        " | p99 ms direct / PgBouncer | app CPU ms/req direct / PgBouncer"
        " | DB CPU ms/req direct / PgBouncer | PgBouncer CPU ms/req | other load | non-2xx |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, stats in part["summary"].items():
        direct, pooled = stats["direct"], stats["pgbouncer"]
        by_round = ", ".join(f"{ratio:.2f}" for ratio in stats["ratios_by_round"])
        errors = (
            f"{_errors(direct['non2xx'], direct['socket_errors'])}"
            f" / {_errors(pooled['non2xx'], pooled['socket_errors'])}"
        )
        lines.append(
            f"| {TITLES[scenario]} | {direct['rps']:.0f} | {pooled['rps']:.0f} | {stats['ratio']:.2f}"
            f" | {by_round} | {_ms(direct['p50_ms'])} / {_ms(pooled['p50_ms'])}"
            f" | {_ms(direct['p99_ms'])} / {_ms(pooled['p99_ms'])}"
            f" | {_number(direct['cpu_ms_per_request'])} / {_number(pooled['cpu_ms_per_request'])}"
            f" | {_number(direct['db_cpu_ms_per_request'])} / {_number(pooled['db_cpu_ms_per_request'])}"
            f" | {_number(pooled['pooler_cpu_ms_per_request'])} | {_number(stats['other_cores'], 1)}"
            f" | {errors} |"
        )
    direct_open = ", ".join(str(count) for count in connections["direct"])
    pooled_open = ", ".join(str(count) for count in connections["pgbouncer"])
    lines += [
        "",
        "PostgreSQL connections to `blogapi_bench` open after each round's last scenario: direct"
        f" {direct_open} (blogapi's pool); through PgBouncer {pooled_open} (PgBouncer's server"
        " connections, for blogapi's pool of client connections).",
    ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    meta, options, summary = results["meta"], results["options"], results["summary"]
    host, versions_ = meta["machine"], meta["versions"]
    lines = [
        "# Benchmark results",
        "",
        f"`{meta['command']}` on {meta['finished'][:16].replace('T', ' ')} UTC, {meta['minutes']} minutes.",
        "",
        f"- Machine: {host['nproc']} CPUs ({host['cpu_model']}), {host['ram_gib']} GiB RAM,"
        f" Linux {host['kernel']}; wrk, the servers and PostgreSQL share it.",
        f"- blogapi: {meta['blogapi']}.",
        "- Versions: " + ", ".join(f"{name} {version}" for name, version in versions_.items()) + ".",
        f"- Load average (1, 5, 15 min) at start {_loads(meta['load_average']['start'])},"
        f" at end {_loads(meta['load_average']['end'])}. The machine is shared (other sessions run"
        " tests on it): absolute figures are noisy; read the ratios, each taken within one run or round.",
    ]
    for part, origin in results.get("merged", {}).items():
        lines.append(
            f"- The part *{part}* is from an earlier run: `{origin['command']}`, finished"
            f" {origin['finished'][:16].replace('T', ' ')} UTC, blogapi {origin['blogapi']}, load average"
            f" at start {_loads(origin['load_average']['start'])}."
        )
    if summary:
        lines += _main_header(options)
    for scenario, apps in summary.items():
        blogapi, tutorial, raw = apps["blogapi"], apps["tutorial"], apps["raw"]
        lines.append(
            f"| {TITLES[scenario]} | {blogapi['ratio_to_raw']:.2f} | {tutorial['ratio_to_raw']:.2f}"
            f" | {blogapi['ratio_to_tutorial']:.2f} | {raw['rps']:.0f} |"
        )
    if summary:
        lines += [
            "",
            "### Per app (medians; non-2xx summed over the rounds)",
            "",
            "| scenario | app | req/s | / raw | p50 ms | p99 ms | app CPU ms/req | DB CPU ms/req | other load"
            " | non-2xx |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    for scenario, apps in summary.items():
        for app, stats in apps.items():
            lines.append(
                f"| {TITLES[scenario]} | {app} | {stats['rps']:.0f} | {stats['ratio_to_raw']:.2f}"
                f" | {_ms(stats['p50_ms'])} | {_ms(stats['p99_ms'])} | {_number(stats['cpu_ms_per_request'])}"
                f" | {_number(stats['db_cpu_ms_per_request'])} | {_number(stats['other_cores'], 1)}"
                f" | {_errors(stats['non2xx'], stats['socket_errors'])} |"
            )
    extras = results["extras"]
    if "scale" in extras:
        lines += _scale_lines(extras["scale"])
    if "sqlite" in extras:
        lines += ["", "## blogapi on SQLite (one round, same seed)", "", *_run_rows(_runs(extras["sqlite"]))]
    if "workers" in extras:
        lines += _workers_lines(extras["workers"])
    if "pgbouncer" in extras:
        lines += _pgbouncer_lines(extras["pgbouncer"])
    if "soak" in extras:
        soak_ = extras["soak"]
        lines += [
            "",
            f"## Soak: {soak_['seconds']:.0f} s of the mix on blogapi",
            "",
            "| req/s | p50 ms | p99 ms | max ms | non-2xx | RSS after warm-up | RSS at end"
            " | busy connections after | verdict |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {soak_['rps']:.0f} | {_ms(soak_['p50_ms'])} | {_ms(soak_['p99_ms'])} | {_ms(soak_['max_ms'])}"
            f" | {_errors(soak_['non2xx'], soak_['socket_errors'])} | {soak_['rss_start_mib']:.0f} MiB"
            f" | {soak_['rss_end_mib']:.0f} MiB | {soak_['busy_connections_after']}"
            f" of {soak_['connections_after']} | {'ok' if soak_['ok'] else 'FAILED'} |",
            "",
            "Busy connections: `pg_stat_activity` rows of `blogapi_bench` with application_name = 'blogapi'"
            " and state <> 'idle',"
            " once the server was idle after the load.",
        ]
    if "auth" in extras:
        auth = _runs(extras["auth"])
        few, many = AUTH_CONNECTIONS, options["connections"]
        titles = {
            "signup": f"{TITLES['signup']}, {few} connections",
            "login": f"{TITLES['login']}, {few} connections",
            "get_alone": f"{TITLES['post']}, {many} connections, alone",
            f"get_during_{few}_logins": f"the same GETs, during {few} concurrent logins",
            f"{few}_logins_during_gets": f"those {few} concurrent logins",
            f"get_during_{many}_logins": f"the same GETs, during {many} concurrent logins",
            f"{many}_logins_during_gets": f"those {many} concurrent logins",
        }
        lines += [
            "",
            "## Sign-up and login (blogapi, Argon2)",
            "",
            *_run_rows({titles.get(name, name): run for name, run in auth.items()}),
        ]
    lines += ["", "## Errors in the server logs", ""]
    errors = {server: found for server, found in results["server_errors"].items() if found}
    for server, found in errors.items():
        lines.append(f"- {server}: {len(found)} lines, the first: `{found[0][:200]}`")
    if not errors:
        lines.append("None: no tracebacks or ERROR records in any server's log.")
    return "\n".join(lines) + "\n"


def _runs(data: dict[str, dict[str, Any]]) -> dict[str, Run]:
    return {name: Run(**fields) for name, fields in data.items()}


# -- main ----------------------------------------------------------------------------------


def merge(results: dict[str, Any], earlier: dict[str, Any]) -> None:
    """Add the parts of an earlier run that this one lacks, each labelled with its run."""
    meta = earlier["meta"]
    origin = {key: meta[key] for key in ("command", "finished", "blogapi", "load_average")}
    if not results["summary"] and earlier.get("summary"):
        results["summary"], results["rounds"] = earlier["summary"], earlier["rounds"]
        results["options"] = {
            **results["options"],
            **{k: v for k, v in earlier["options"].items() if "scale" not in k},
        }
        results["merged"]["main"] = origin
    for part, data in earlier.get("extras", {}).items():
        if part not in results["extras"]:
            results["extras"][part] = data
            results["merged"][part] = origin
    for server, errors in earlier.get("server_errors", {}).items():
        results["server_errors"].setdefault(f"{server} (earlier run)", errors)


def _raise_signal(signum: int, _frame: FrameType | None) -> None:
    if signum == signal.SIGALRM:
        raise BenchError("the time limit ran out (--time-limit)")
    raise SystemExit(128 + signum)  # unwinds, so every server is stopped


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(signum, _raise_signal)
    signal.alarm(int(options.time_limit_minutes * 60))
    RESULTS.mkdir(exist_ok=True)
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir()
    started, load_at_start = time.monotonic(), os.getloadavg()
    secret_key = secrets.token_urlsafe(48)
    command = " ".join([".venv/bin/python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        if shutil.which("wrk") is None:
            raise BenchError("wrk is not installed: `apt-get install wrk` (or run `make bench` as root)")
        dataset = PostgresDataset(options.postgres_url, options.users, options.posts_per_user)
        server_errors: dict[str, list[str]] = {}
        rounds: list[dict[str, dict[str, Run]]] = []
        if options.main or options.pgbouncer:
            print("preparing the PostgreSQL data set", flush=True)
            dataset.prepare()
        if options.main:
            rounds = main_rounds(dataset, options, secret_key, server_errors)
        extras: dict[str, Any] = {}
        if options.sqlite:
            print("SQLite", flush=True)
            extras["sqlite"] = {
                name: asdict(run) for name, run in sqlite_runs(options, secret_key, server_errors).items()
            }
        if options.workers:
            print("blogapi serve --workers 1 and --workers 2, side by side", flush=True)
            extras["workers"] = workers_rounds(dataset, options, secret_key, server_errors)
        if options.pgbouncer:
            print("blogapi direct to PostgreSQL and through PgBouncer, side by side", flush=True)
            extras["pgbouncer"] = pgbouncer_rounds(dataset, options, secret_key, server_errors)
        if options.soak:
            extras["soak"] = soak(dataset, options, secret_key, server_errors)
        if options.auth:
            print("sign-up and login", flush=True)
            runs = auth_runs(dataset, options, secret_key, server_errors)
            extras["auth"] = {name: asdict(run) for name, run in runs.items()}
        if options.scale:
            print("the lists at scale", flush=True)
            extras["scale"] = scale_runs(options, secret_key, server_errors)
        results = {
            "meta": {
                "command": "make bench" if os.environ.get("MAKELEVEL") and argv is None else command,
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                "minutes": round((time.monotonic() - started) / 60, 1),
                "load_average": {"start": load_at_start, "end": os.getloadavg()},
                "machine": machine(),
                "blogapi": blogapi_source(),
                "versions": versions(dataset),
            },
            "options": asdict(options),
            "summary": summarize(rounds) if rounds else {},
            "rounds": [
                {
                    scenario: {app: asdict(run) for app, run in apps.items()}
                    for scenario, apps in round_.items()
                }
                for round_ in rounds
            ],
            "extras": extras,
            "server_errors": server_errors,
            "merged": {},
        }
        if options.merge is not None:
            merge(results, json.loads(Path(options.merge).read_text()))
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (RESULTS / "latest.md").write_text(table)
    if options.write_results_md:
        (BENCH / "RESULTS.md").write_text(table)
    print(f"\n{table}\nwritten: {RESULTS / 'latest.json'}, {RESULTS / 'latest.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
