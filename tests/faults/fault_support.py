"""What the fault tests share: private database servers they may stop and kill, the app, a load.

The fault tests restart database servers, so they never use the shared ones (5432, 3306)
that other test runs are using: each starts its own PostgreSQL or MariaDB on a free port,
in a temporary directory, and removes it at the end. When the binaries are missing or the
server does not start, those tests are skipped with the reason, or fail when
BLOGAPI_TEST_REQUIRE names the backend (as CI sets it).

(Not a conftest.py: a second conftest module in a directory without __init__.py would
replace the top-level one in sys.modules, breaking `from conftest import ...` elsewhere.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, NoReturn

import httpx
import pytest
from asgi_lifespan import LifespanManager
from conftest import PASSWORD, REQUIRED, TEST_SECRET, database_env, upgrade
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool, QueuePool

from blogapi.auth.security import create_access_token
from blogapi.auth.sessions import service as sessions_service
from blogapi.config import Environment, Settings
from blogapi.db import Database
from blogapi.main import create_app
from blogapi.posts.models import Post, post_tag
from blogapi.users import service as users_service
from blogapi.users.schemas import UserCreate

POSTGRES_BIN = Path(os.environ.get("BLOGAPI_TEST_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
MARIADBD = os.environ.get("BLOGAPI_TEST_MARIADBD", "/usr/sbin/mariadbd")
MARIADB_INSTALL_DB = os.environ.get("BLOGAPI_TEST_MARIADB_INSTALL_DB", "mariadb-install-db")
BIN = Path(sys.executable).parent
IS_ROOT = os.geteuid() == 0
COMMAND_TIMEOUT = 60
TAGS_PER_POST = 3

_names = itertools.count(1)


class ServerUnavailable(Exception):
    """A private server could not be set up; the message says why."""


def unavailable(backend: str, reason: str) -> NoReturn:
    """Skip, or fail when the backend is required: the fault tests must not pass unseen."""
    message = f"private {backend} server unavailable: {reason}"
    if backend in REQUIRED:
        pytest.fail(f"required backend {message}", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(argv: list[str], *, what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerUnavailable(f"{what}: {' '.join(argv)} failed: {exc}") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-2000:]
        raise ServerUnavailable(f"{what}: {' '.join(argv)} exited {done.returncode}: {output}")


def _tail(path: Path, characters: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-characters:]
    except OSError:
        return ""


# PostgreSQL ------------------------------------------------------------------------------


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory, owned by the `postgres` OS user when run as root."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.log = root / "server.log"

    @staticmethod
    def _as_owner(argv: list[str]) -> list[str]:
        # initdb and postgres refuse to run as root.
        return ["runuser", "-u", "postgres", "--", *argv] if IS_ROOT else argv

    @classmethod
    def create(cls) -> PrivatePostgres:
        for program in ("initdb", "pg_ctl"):
            if not (POSTGRES_BIN / program).is_file():
                raise ServerUnavailable(f"{POSTGRES_BIN / program} not found (BLOGAPI_TEST_POSTGRES_BIN)")
        if IS_ROOT and shutil.which("runuser") is None:
            raise ServerUnavailable("running as root needs runuser to start PostgreSQL as `postgres`")
        # Not under pytest's tmp_path: its 0700 parents keep the postgres user out.
        root = Path(tempfile.mkdtemp(prefix="blogapi-faults-pg-"))
        server = cls(root, free_port())
        try:
            server.sockets.mkdir()
            if IS_ROOT:
                try:
                    owner = pwd.getpwnam("postgres")
                except KeyError as exc:
                    raise ServerUnavailable("no `postgres` OS user to run PostgreSQL as") from exc
                for path in (root, server.sockets):
                    os.chown(path, owner.pw_uid, owner.pw_gid)
            _run(
                server._as_owner(
                    [
                        *(str(POSTGRES_BIN / "initdb"), "-D", str(server.data)),
                        *("-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"),
                    ]
                ),
                what="initdb",
            )
            server.start()
        except BaseException:
            server.remove()
            raise
        return server

    def _pg_ctl(self, *args: str) -> None:
        _run(self._as_owner([str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), *args]), what="pg_ctl")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=100"
        )
        try:
            self._pg_ctl("-o", options, "-l", str(self.log), "-t", "30", "-w", "start")
        except ServerUnavailable as exc:
            raise ServerUnavailable(f"{exc}\nserver log:\n{_tail(self.log)}") from exc

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-t", "30", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    async def new_database(self) -> str:
        """A new, migrated database on this server."""
        name = f"blogapi_faults_{next(_names)}"
        admin = create_async_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            async with admin.connect() as connection:
                await connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            await admin.dispose()
        url = self.url(name)
        await asyncio.to_thread(upgrade, url)
        return url

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(ServerUnavailable):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# MariaDB ---------------------------------------------------------------------------------


class PrivateMariaDB:
    """A mariadbd process this test session started, on a data directory of its own."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.log = root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls) -> PrivateMariaDB:
        install = shutil.which(MARIADB_INSTALL_DB)
        if install is None or not Path(MARIADBD).is_file():
            raise ServerUnavailable(
                f"{MARIADB_INSTALL_DB} or {MARIADBD} not found"
                " (BLOGAPI_TEST_MARIADB_INSTALL_DB, BLOGAPI_TEST_MARIADBD)"
            )
        server = cls(Path(tempfile.mkdtemp(prefix="blogapi-faults-mariadb-")), free_port())
        try:
            _run(
                [install, "--no-defaults", f"--datadir={server.data}"]
                + (["--user=root"] if IS_ROOT else [])
                + ["--auth-root-authentication-method=normal", "--skip-test-db"],
                what="mariadb-install-db",
            )
            server.start()
        except BaseException:
            server.remove()
            raise
        return server

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "mariadbd is already running"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    MARIADBD,
                    "--no-defaults",
                    f"--datadir={self.data}",
                    f"--port={self.port}",
                    f"--socket={self.root / 'mysqld.sock'}",
                    f"--pid-file={self.root / 'mysqld.pid'}",
                    "--bind-address=127.0.0.1",
                    "--skip-name-resolve",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=64M",
                    "--max-connections=200",
                    *(["--user=root"] if IS_ROOT else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerUnavailable(
                    f"mariadbd exited {self.process.returncode}; its log:\n{_tail(self.log)}"
                )
            if _mariadb_greets(self.port):
                return
            time.sleep(0.1)
        raise ServerUnavailable(f"mariadbd did not accept connections; its log:\n{_tail(self.log)}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM: a clean shutdown, closing every client connection; SIGKILL: a crash."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=COMMAND_TIMEOUT)

    def url(self, database: str = "") -> str:
        return f"mysql+aiomysql://root@127.0.0.1:{self.port}/{database}"

    async def new_database(self) -> str:
        name = f"blogapi_faults_{next(_names)}"
        admin = create_async_engine(self.url(), poolclass=NullPool)
        try:
            async with admin.connect() as connection:
                await connection.execute(
                    text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
                )
        finally:
            await admin.dispose()
        url = self.url(name)
        await asyncio.to_thread(upgrade, url)
        return url

    def remove(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def _mariadb_greets(port: int) -> bool:
    """The server sends its handshake packet as soon as it accepts clients."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return len(sock.recv(16)) > 0
    except OSError:
        return False


# The app ---------------------------------------------------------------------------------


def app_settings(database_url: str, **overrides: Any) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key=TEST_SECRET,
        environment=Environment.TEST,
        _env_file=None,
        **overrides,
    )


@dataclass
class RunningApp:
    client: httpx.AsyncClient
    database: Database
    settings: Settings


def checked_out(database: Database) -> int:
    pool = database.engine.pool
    assert isinstance(pool, QueuePool)
    return pool.checkedout()


@contextlib.asynccontextmanager
async def running_app(database_url: str, **overrides: Any) -> AsyncIterator[RunningApp]:
    """The app in-process, on an engine the test can inspect; no connection may stay checked out."""
    settings = app_settings(database_url, **overrides)
    database = Database.from_settings(settings)
    try:
        app = create_app(settings, database)
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
            ) as client,
        ):
            yield RunningApp(client, database, settings)
        assert checked_out(database) == 0, "a connection was not returned to the pool"
    finally:
        await database.dispose()


@dataclass(frozen=True)
class Writer:
    user_id: int
    headers: dict[str, str]


async def create_writers(database_url: str, count: int, *, admin: bool = False) -> list[Writer]:
    """Accounts made in the database directly, with tokens signed as the app signs them.

    For apps in other processes, which would hash sign-up passwords at production cost.
    """
    settings = app_settings(database_url)
    engine = create_async_engine(database_url, poolclass=NullPool)
    database = Database.from_engine(engine)
    writers = []
    try:
        for _ in range(count):
            number = next(_names)
            async with database.sessionmaker.begin() as session:
                user = await users_service.create_user(
                    session,
                    UserCreate(
                        name=f"Writer {number}", email=f"writer{number}@example.com", password=PASSWORD
                    ),
                    settings,
                    is_admin=admin,
                )
                issued = await sessions_service.start(
                    await session.connection(), user.id, "127.0.0.1", "fault_support", settings
                )
                subject = issued.subject
            token = create_access_token(subject, secret=TEST_SECRET, lifetime=timedelta(hours=1))
            writers.append(Writer(subject.user_id, {"Authorization": f"Bearer {token}"}))
    finally:
        await engine.dispose()
    return writers


# A load with a fault in the middle ---------------------------------------------------------


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    acknowledged: set[int] = field(default_factory=set)
    """Ids of posts answered with 201."""
    failures: list[str] = field(default_factory=list)
    """Every 5xx but a 503 with Retry-After, every other unexpected status, hang and exception."""
    unavailable: list[float] = field(default_factory=list)
    """When (seconds since the load began) each 503 was answered."""
    unavailable_by_method: Counter[str] = field(default_factory=Counter)

    def check_response(self, response: httpx.Response, elapsed: float, expected: Iterable[int]) -> None:
        self.statuses[response.status_code] += 1
        if response.status_code == 503:
            self.unavailable.append(elapsed)
            self.unavailable_by_method[response.request.method] += 1
            if "retry-after" not in response.headers:
                self.failures.append(f"503 without Retry-After: {response.text}")
        elif response.status_code not in expected:
            self.failures.append(
                f"{response.request.method} {response.request.url.path} -> {response.status_code}:"
                f" {response.text[:300]}"
            )


def failure_report(result: LoadResult, caplog: pytest.LogCaptureFixture) -> str:
    """The failures, with the exceptions the app logged as unhandled (what the 500s were)."""
    causes: Counter[str] = Counter()
    for record in caplog.records:
        if record.exc_info and record.exc_info[1] is not None:
            chain: list[str] = []
            error: BaseException | None = record.exc_info[1]
            while error is not None:
                first_line = (str(error).splitlines() or [""])[0]
                chain.append(f"{error.__class__.__module__}.{error.__class__.__name__}: {first_line}")
                error = error.__cause__
            causes[" <- ".join(chain)] += 1
    return (
        f"{len(result.failures)} failures (statuses {dict(result.statuses)}),"
        f" first ones: {result.failures[:5]}; unhandled errors the app logged: {dict(causes)}"
    )


def post_body(label: str) -> dict[str, object]:
    return {
        "title": f"post {label}",
        "body": "written under a fault",
        "tags": ["fault", f"a{label}", f"b{label}"],
    }


async def run_load(
    client: httpx.AsyncClient,
    writers: list[Writer],
    *,
    fault: Callable[[], Awaitable[None]],
    fault_after: float,
    recovery: float,
    request_timeout: float,
) -> LoadResult:
    """One loop per writer, alternating POST /posts and GET /posts until `recovery` seconds after the fault.

    A request not answered within `request_timeout` counts as hung, a failure.
    """
    result = LoadResult()
    started = time.monotonic()
    fault_done = asyncio.Event()
    stop_at: list[float] = []

    async def inject() -> None:
        await asyncio.sleep(fault_after)
        try:
            await fault()
        finally:
            stop_at.append(time.monotonic() + recovery)
            fault_done.set()

    def running() -> bool:
        return not stop_at or time.monotonic() < stop_at[0]

    async def loop(number: int, writer: Writer) -> None:
        for sequence in itertools.count():
            if not running():
                return
            label = f"{number}-{sequence}"
            try:
                async with asyncio.timeout(request_timeout):
                    if sequence % 2 == 0:
                        response = await client.post(
                            "/api/v1/posts", json=post_body(label), headers=writer.headers
                        )
                        expected = {201}
                    else:
                        response = await client.get("/api/v1/posts", params={"limit": 5})
                        expected = {200}
            except TimeoutError:
                result.failures.append(f"request {label} hung for over {request_timeout} s")
                continue
            except Exception as exc:
                result.failures.append(f"request {label} raised {exc.__class__.__name__}: {exc}")
                continue
            result.check_response(response, time.monotonic() - started, expected)
            if response.status_code == 201:
                result.acknowledged.add(response.json()["id"])
            elif response.status_code == 503:
                await asyncio.sleep(0.05)  # a client that backs off a little

    injector = asyncio.create_task(inject())
    async with asyncio.timeout(fault_after + recovery + 120):
        await asyncio.gather(*(loop(number, writer) for number, writer in enumerate(writers)))
    await injector  # raises if the fault itself could not be injected
    return result


async def await_recovery(client: httpx.AsyncClient, writer: Writer, *, attempts: int = 60) -> list[int]:
    """Wait (bounded) for the first success, then every request must succeed; the new post ids."""
    for _ in range(attempts):
        async with asyncio.timeout(10):
            response = await client.get("/api/v1/posts", params={"limit": 5})
        if response.status_code == 200:
            break
        assert response.status_code == 503, response.text
        await asyncio.sleep(0.25)
    else:
        pytest.fail(f"the app did not recover by itself: still {response.status_code} {response.text}")
    created = []
    for number in range(5):
        async with asyncio.timeout(10):
            posted = await client.post(
                "/api/v1/posts", json=post_body(f"after-{number}"), headers=writer.headers
            )
            listed = await client.get("/api/v1/posts", params={"limit": 5})
            me = await client.get("/api/v1/users/me", headers=writer.headers)
        assert posted.status_code == 201, posted.text
        assert listed.status_code == 200, listed.text
        assert me.status_code == 200, me.text
        created.append(posted.json()["id"])
    return created


async def tag_counts(database_url: str) -> dict[int, int]:
    """Every stored post's id and how many tags it has."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with asyncio.timeout(30), engine.connect() as connection:
            rows = await connection.execute(
                select(Post.id, func.count(post_tag.c.tag_id))
                .select_from(Post)
                .outerjoin(post_tag, post_tag.c.post_id == Post.id)
                .group_by(Post.id)
            )
            return {post_id: tags for post_id, tags in rows}
    finally:
        await engine.dispose()


def assert_whole_and_stored(acknowledged: Iterable[int], stored: dict[int, int]) -> None:
    """Every acknowledged post is stored, and no stored post is missing some of its tags."""
    missing = sorted(set(acknowledged) - set(stored))
    assert not missing, f"posts answered 201 but not stored: {missing}"
    partial = {post_id: tags for post_id, tags in stored.items() if tags != TAGS_PER_POST}
    assert not partial, f"posts stored without all {TAGS_PER_POST} tags (post id: tags): {partial}"


# A real server -----------------------------------------------------------------------------


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return _tail(self.log, 200_000)


@contextlib.asynccontextmanager
async def serve(
    argv: list[str], env: dict[str, str], directory: Path, port: int, *, ready_seconds: float = 30
) -> AsyncIterator[Server]:
    """Run a server process (uvicorn, `blogapi serve`) until the block ends; ready at /health/ready.

    Worker processes start slowly on a busy machine: give several more `ready_seconds`.
    """
    log = directory / f"server-{port}.log"
    handle: IO[bytes]
    with log.open("wb") as handle:
        process = await asyncio.to_thread(
            subprocess.Popen,
            argv,
            cwd=directory,  # no stray .env file from the working tree
            env=os.environ | env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=2) as probe:
            for _ in range(int(ready_seconds * 4)):
                if process.poll() is not None:
                    pytest.fail(f"the server exited {process.returncode}:\n{server.output()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if (await probe.get("/health/ready")).status_code == 200:
                        break
                await asyncio.sleep(0.25)
            else:
                pytest.fail(f"the server never became ready:\n{server.output()[-3000:]}")
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait, 30)


def server_env(database_url: str, **settings: object) -> dict[str, str]:
    env = {
        **database_env(database_url),  # DATABASE_POOLER too, behind the test PgBouncer
        "SECRET_KEY": TEST_SECRET,
        "ENVIRONMENT": "test",
    }
    env |= {name.upper(): str(value) for name, value in settings.items()}
    return env


async def assert_killed_idle_connections_are_replaced(
    database_url: str,
    kill: Callable[[], Awaitable[int]],
    *,
    read_first: bool,
    pool_timeout: float,
    request_timeout: float,
) -> None:
    """Warm a pool of 4, `kill` every app connection while none is in use, then every request
    of the next rounds succeeds: the first to meet a dead one (a GET if `read_first`, else a
    POST) fails its attempt, the pool drops them all, and the request runs again."""
    [writer] = await create_writers(database_url, 1)
    async with running_app(database_url, pool_size=4, max_overflow=0, pool_timeout=pool_timeout) as app:
        async with asyncio.timeout(request_timeout):
            warm = await asyncio.gather(
                *(app.client.get("/api/v1/posts") for _ in range(3)),
                *(
                    app.client.post("/api/v1/posts", json=post_body(f"warm-{n}"), headers=writer.headers)
                    for n in range(3)
                ),
            )
        assert [response.status_code for response in warm] == [200] * 3 + [201] * 3
        acknowledged = {response.json()["id"] for response in warm[3:]}

        killed = await kill()
        assert killed >= 2, f"only {killed} pooled connection(s) to kill"

        for number in range(2 * killed):
            async with asyncio.timeout(request_timeout):
                if read_first:
                    listed = await app.client.get("/api/v1/posts")
                posted = await app.client.post(
                    "/api/v1/posts", json=post_body(f"after-kill-{number}"), headers=writer.headers
                )
                if not read_first:
                    listed = await app.client.get("/api/v1/posts")
            assert listed.status_code == 200, listed.text
            assert posted.status_code == 201, posted.text
            acknowledged.add(posted.json()["id"])
    assert_whole_and_stored(acknowledged, await tag_counts(database_url))
