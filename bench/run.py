"""Benchmark blogapi against two baselines with wrk, on one seeded PostgreSQL database.

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
from contextlib import suppress
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlencode

import asyncpg
from sqlalchemy import make_url

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # .venv/bin: the servers run from the same environment
RESULTS = BENCH / "results"
LOGS = RESULTS / "logs"
LUA = BENCH / "wrk" / "scenarios.lua"

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
        ("workers", "the scenarios on `blogapi serve --workers 2`"),
        ("soak", "a mixed soak on blogapi: RSS, errors, busy connections afterwards"),
        ("auth", "sign-up and login cost, and GET latency during a burst of logins"),
    ):
        parser.add_argument(
            f"--{extra}",
            action=argparse.BooleanOptionalAction,
            help=f"{help_text} (default: on; off with --quick)",
        )
    parser.add_argument("--soak-seconds", type=int, help="soak length (default 120)")
    parser.add_argument("--auth-seconds", type=int, help="length of each sign-up/login run (default 10)")
    parser.add_argument(
        "--time-limit", type=float, default=35.0, help="abort after this many minutes (default 35)"
    )
    args = parser.parse_args(argv)

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if args.quick else full)

    scenarios = tuple(name for name in args.scenarios.split(",") if name)
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
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
        sqlite=pick(args.sqlite, True, False),
        workers=pick(args.workers, True, False),
        soak=pick(args.soak, True, False),
        soak_seconds=pick(args.soak_seconds, 120, 15),
        auth=pick(args.auth, True, False),
        auth_seconds=pick(args.auth_seconds, 10, 3),
        time_limit_minutes=args.time_limit,
        write_results_md=not args.quick,
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

    @classmethod
    def take(cls, server_pid: int, database: str | None) -> CpuSample:
        user, nice, system, _idle, _iowait, irq, softirq = (
            int(value) for value in Path("/proc/stat").read_text().split(maxsplit=8)[1:8]
        )
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(
            machine=(user + nice + system + irq + softirq) / CLOCK_TICKS,
            server=cpu_seconds(server_pid),
            backends={pid: _cpu_seconds([pid]) for pid in backends_of(database)} if database else {},
            wrk=children.ru_utime + children.ru_stime,
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
    """One app server on 127.0.0.1, started in its own process group and stopped with it."""

    def __init__(self, spec: AppSpec, label: str) -> None:
        self.spec = spec
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


@dataclass(frozen=True)
class Load:
    """What wrk sends: a scenario of bench/wrk/scenarios.lua and its arguments."""

    scenario: str
    posts: int
    users: int
    auth: str  # "bearer:<token>" for blogapi, "author:<id>" for the baselines
    connections: int


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
        f"--script={LUA}",
        url,
        "--",
        load.scenario,
        str(load.posts),
        str(load.users),
        load.auth,
        secrets.token_hex(6),  # a nonce: sign-up emails differ between runs
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
    before = CpuSample.take(server.pid, server.database)
    run = wrk(server.url, load, seconds, threads)
    after = CpuSample.take(server.pid, server.database)
    server_cpu, database_cpu = after.server - before.server, after.database_since(before)
    other = (after.machine - before.machine) - server_cpu - database_cpu - (after.wrk - before.wrk)
    return replace(
        run,
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

    def __init__(self, database_url: str, options: Options) -> None:
        self.url = database_url
        self.users = options.users
        self.posts = options.posts
        self.posts_per_user = options.posts_per_user

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
        self.blogapi(*f"seed --users {self.users} --posts-per-user {self.posts_per_user} --seed 1".split())
        if self.counts() != self.expected():
            raise BenchError(f"seeding {self.url} gave {self.counts()}; see {LOGS / 'seed.log'}")
        self.cleanup()

    def blogapi(self, *args: str) -> None:
        run_command([str(BIN / "blogapi"), *args], self.env(), LOGS / "seed.log", timeout=900)

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


COUNTS = 'SELECT (SELECT count(*) FROM "user"), (SELECT coalesce(max(id), 0) FROM "user"),'
COUNTS += " (SELECT count(*) FROM post), (SELECT coalesce(max(id), 0) FROM post)"


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
        pg(dsn, "DELETE FROM post WHERE id > $1", self.posts)  # post_tag cascades
        pg(dsn, 'DELETE FROM "user" WHERE id > $1', self.users)
        pg(dsn, 'VACUUM ANALYZE post, post_tag, "user", tag')

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


class SqliteDataset(Dataset):
    def __init__(self, path: Path, options: Options) -> None:
        super().__init__(f"sqlite+aiosqlite:///{path}", options)
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
            connection.execute("DELETE FROM post WHERE id > ?", (self.posts,))
            connection.execute('DELETE FROM "user" WHERE id > ?', (self.users,))
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


def app_specs(dataset: Dataset, secret_key: str) -> dict[str, AppSpec]:
    uvicorn = str(BIN / "uvicorn")
    baselines = ("--app-dir", str(BENCH / "baselines"))
    return {
        "blogapi": AppSpec(
            "blogapi", (uvicorn, "blogapi.asgi:app", *UVICORN_FLAGS), blogapi_env(dataset, secret_key)
        ),
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


def workers_runs(
    dataset: PostgresDataset, options: Options, secret_key: str, server_errors: dict[str, list[str]]
) -> dict[str, Run]:
    spec = AppSpec(
        "blogapi", (str(BIN / "blogapi"), "serve", "--workers", "2"), blogapi_env(dataset, secret_key)
    )
    with Server(spec, "workers2-blogapi") as server:
        runs = run_scenarios("blogapi", server, dataset, options, Preflight(), "workers=2")
    server_errors.setdefault("blogapi (serve --workers 2)", []).extend(server.log_errors())
    return runs


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
        [shutil.which("git") or "git", "-C", str(package), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    revision = f"git {git.stdout.strip()}" if git.returncode == 0 else "not a git checkout"
    return f"{metadata.version('blogapi')}, {revision}, from {package}"


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
        f"- Data: `blogapi seed --users {options['users']} --posts-per-user {options['posts_per_user']}"
        " --seed 1` (PostgreSQL database `blogapi_bench`); ids drawn uniformly from the seeded ranges.",
        f"- Load: wrk, {options['connections']} connections, {options['wrk_threads']} thread(s),"
        f" {options['duration']} s measured after {options['warmup']} s of warm-up, per scenario;"
        f" one uvicorn worker per app ({' '.join(UVICORN_FLAGS)}); {options['rounds']} alternating rounds"
        " (blogapi, tutorial, raw); medians across rounds. The ratio to raw is taken within each round.",
        f"- Load average (1, 5, 15 min) at start {_loads(meta['load_average']['start'])},"
        f" at end {_loads(meta['load_average']['end'])}.",
        "- Columns: *app CPU* is the server's process tree and *DB CPU* the PostgreSQL backends of"
        " `blogapi_bench`, each per request; *other load* is the CPU (in cores) that everything else"
        " on the machine used meanwhile: above ~0.2, other work competed with the run.",
        "",
        "## Requests/s relative to raw and to the tutorial (median of per-round ratios)",
        "",
        "| scenario | blogapi / raw | tutorial / raw | blogapi / tutorial | raw req/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for scenario, apps in summary.items():
        blogapi, tutorial, raw = apps["blogapi"], apps["tutorial"], apps["raw"]
        lines.append(
            f"| {TITLES[scenario]} | {blogapi['ratio_to_raw']:.2f} | {tutorial['ratio_to_raw']:.2f}"
            f" | {blogapi['ratio_to_tutorial']:.2f} | {raw['rps']:.0f} |"
        )
    lines += [
        "",
        "## Per app (medians; non-2xx summed over the rounds)",
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
    if "sqlite" in extras:
        lines += ["", "## blogapi on SQLite (one round, same seed)", "", *_run_rows(_runs(extras["sqlite"]))]
    if "workers" in extras:
        lines += ["", "## `blogapi serve --workers 2` on PostgreSQL (one round)", ""]
        lines += [
            "`blogapi serve` has no flags for loop, parser or access log: uvicorn's defaults apply"
            " (uvloop and httptools when installed, access log on).",
            "",
            *_run_rows(_runs(extras["workers"])),
        ]
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
        print("preparing the PostgreSQL data set", flush=True)
        dataset = PostgresDataset(options.postgres_url, options)
        dataset.prepare()
        server_errors: dict[str, list[str]] = {}
        rounds = main_rounds(dataset, options, secret_key, server_errors)
        extras: dict[str, Any] = {}
        if options.sqlite:
            print("SQLite", flush=True)
            extras["sqlite"] = {
                name: asdict(run) for name, run in sqlite_runs(options, secret_key, server_errors).items()
            }
        if options.workers:
            print("blogapi serve --workers 2", flush=True)
            runs = workers_runs(dataset, options, secret_key, server_errors)
            extras["workers"] = {name: asdict(run) for name, run in runs.items()}
        if options.soak:
            extras["soak"] = soak(dataset, options, secret_key, server_errors)
        if options.auth:
            print("sign-up and login", flush=True)
            runs = auth_runs(dataset, options, secret_key, server_errors)
            extras["auth"] = {name: asdict(run) for name, run in runs.items()}
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
            "summary": summarize(rounds),
            "rounds": [
                {
                    scenario: {app: asdict(run) for app, run in apps.items()}
                    for scenario, apps in round_.items()
                }
                for round_ in rounds
            ],
            "extras": extras,
            "server_errors": server_errors,
        }
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
