"""`make fuzz`: schemathesis against the running service, over HTTP, on every backend.

For each backend and role (user, admin): a fresh database (SQLite: a temporary file;
PostgreSQL and MariaDB: the database named by the URL, dropped and created again),
`blogapi db upgrade`, uvicorn on a free port, a wait for /health/ready, a login to prove
auth works, and `schemathesis run` with fuzz/schemathesis.toml (every default check, all
four phases, stateful included) and fuzz/hooks.py (a fresh account's token, renewed on 401).
Reports go to fuzz/reports/<backend>/<role>/: server.log (the service's log, tracebacks
included), schemathesis.txt (the console output), junit.xml and events.ndjson.

Exit status: 0 when every backend ran with zero failures; 1 when any failed or could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
BIN = ROOT / ".venv" / "bin"
BACKENDS = ("sqlite", "postgresql", "mariadb")
ROLES = ("user", "admin")
DEFAULT_URLS = {
    "postgresql": "postgresql+asyncpg://root@127.0.0.1:5432/blogapi_fuzz",
    "mariadb": "mysql+aiomysql://root@127.0.0.1:3306/blogapi_fuzz",
}
URL_VARIABLES = {"postgresql": "BLOGAPI_FUZZ_POSTGRES_URL", "mariadb": "BLOGAPI_FUZZ_MARIADB_URL"}
DEFAULT_SEED = 20261125
DEFAULT_MAX_EXAMPLES = 100
READY_TIMEOUT = 60.0

# Settings for the service under test. Throttling stays on but cannot trip: the fuzzer
# logs in (and signs up) with random values thousands of times from one address. Nothing
# else changes.
SERVICE_SETTINGS = {
    "ENVIRONMENT": "test",
    "LOGIN_FAILURES_PER_ACCOUNT": "1000000",
    "LOGIN_FAILURES_PER_ACCOUNT_AND_ADDRESS": "1000000",
    "LOGIN_FAILURES_PER_ADDRESS": "1000000",
    "SIGNUPS_PER_ADDRESS": "1000000",
    "PASSWORD_RESETS_PER_ADDRESS": "1000000",
    "PASSWORD_RESETS_PER_ACCOUNT": "1000000",
}


@dataclass
class Outcome:
    backend: str
    status: str  # "passed", "failed" or "error"
    seconds: float
    detail: str


class SetupError(Exception):
    """The backend could not be fuzzed (database, migration or server trouble)."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backends",
        default=os.environ.get("BACKENDS") or ",".join(BACKENDS),
        help="comma-separated subset of sqlite,postgresql,mariadb (default: all; env BACKENDS)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"schemathesis seed ({DEFAULT_SEED})")
    parser.add_argument(
        "--max-examples",
        type=int,
        default=DEFAULT_MAX_EXAMPLES,
        help=f"examples per operation and phase ({DEFAULT_MAX_EXAMPLES})",
    )
    parser.add_argument(
        "--roles",
        default=os.environ.get("ROLES") or ",".join(ROLES),
        help="comma-separated accounts to fuzz as, each a full run: user,admin (default: both; env ROLES)",
    )
    parser.add_argument("--workers", default=None, help="schemathesis workers (default: schemathesis.toml)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(URL_VARIABLES["postgresql"], DEFAULT_URLS["postgresql"]),
        help="PostgreSQL database to DROP and re-create (env BLOGAPI_FUZZ_POSTGRES_URL)",
    )
    parser.add_argument(
        "--mariadb-url",
        default=os.environ.get(URL_VARIABLES["mariadb"], DEFAULT_URLS["mariadb"]),
        help="MariaDB database to DROP and re-create (env BLOGAPI_FUZZ_MARIADB_URL)",
    )
    parser.add_argument("--reports", type=Path, default=FUZZ / "reports", help="report directory")
    parser.add_argument("--keep-database", action="store_true", help="leave the fuzzed database in place")
    parser.add_argument(
        "schemathesis_args", nargs="*", help="after `--`: extra arguments for `schemathesis run`"
    )
    args = parser.parse_args(argv)
    args.backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = set(args.backends) - set(BACKENDS)
    if unknown or not args.backends:
        parser.error(f"--backends takes a subset of {','.join(BACKENDS)}, not {args.backends}")
    args.roles = [name.strip() for name in args.roles.split(",") if name.strip()]
    if set(args.roles) - set(ROLES) or not args.roles:
        parser.error(f"--roles takes a subset of {','.join(ROLES)}, not {args.roles}")
    return args


# --- databases -------------------------------------------------------------------------


async def _recreate_server_database(url: str) -> None:
    from sqlalchemy import make_url, text
    from sqlalchemy.ext.asyncio import create_async_engine

    target = make_url(url)
    name = target.database
    if not name or not name.replace("_", "").isalnum():
        raise SetupError(f"refusing to drop database {name!r}: use letters, digits and _ only")
    if target.get_backend_name() == "postgresql":
        admin = create_async_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
        statements = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"']
    else:
        admin = create_async_engine(target.set(database=""), isolation_level="AUTOCOMMIT")
        statements = [
            f"DROP DATABASE IF EXISTS `{name}`",
            f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci",
        ]
    try:
        async with admin.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await admin.dispose()


async def _drop_server_database(url: str) -> None:
    from sqlalchemy import make_url, text
    from sqlalchemy.ext.asyncio import create_async_engine

    target = make_url(url)
    if target.get_backend_name() == "postgresql":
        admin = create_async_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
        statement = f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'
    else:
        admin = create_async_engine(target.set(database=""), isolation_level="AUTOCOMMIT")
        statement = f"DROP DATABASE IF EXISTS `{target.database}`"
    try:
        async with admin.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await admin.dispose()


@contextlib.contextmanager
def fresh_database(backend: str, args: argparse.Namespace) -> Iterator[str]:
    """An empty database for `backend`, removed afterwards unless --keep-database."""
    if backend == "sqlite":
        directory = Path(tempfile.mkdtemp(prefix="blogapi-fuzz-"))
        try:
            yield f"sqlite+aiosqlite:///{directory / 'fuzz.db'}"
        finally:
            if args.keep_database:
                print(f"  kept {directory / 'fuzz.db'}")
            else:
                shutil.rmtree(directory, ignore_errors=True)
        return
    url = args.postgres_url if backend == "postgresql" else args.mariadb_url
    try:
        asyncio.run(asyncio.wait_for(_recreate_server_database(url), timeout=30))
    except SetupError:
        raise
    except Exception as exc:
        raise SetupError(f"cannot (re)create the {backend} database at {url}: {exc!r}") from exc
    try:
        yield url
    finally:
        if args.keep_database:
            print(f"  kept {url}")
        else:
            with contextlib.suppress(Exception):
                asyncio.run(asyncio.wait_for(_drop_server_database(url), timeout=30))


# --- the service -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_environment(database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SERVICE_SETTINGS)
    env["DATABASE_URL"] = database_url
    env["SECRET_KEY"] = secrets.token_urlsafe(48)
    return env


def http(
    method: str, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310  (our own server)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_ready(base_url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SetupError(f"uvicorn exited with {server.returncode}; see {log}")
        with contextlib.suppress(OSError):
            status, _ = http("GET", f"{base_url}/health/ready")
            if status == 200:
                return
        time.sleep(0.2)
    raise SetupError(f"/health/ready did not answer 200 within {READY_TIMEOUT:.0f}s; see {log}")


def check_auth(base_url: str, env: dict[str, str], role: str) -> None:
    """Make an account and log in, as the hooks will: a failure here is a setup error, not a finding."""
    email = f"fuzz-preflight-{role}-{secrets.token_hex(6)}@fuzz.example"
    password = "fuzz-password-0123456789"  # noqa: S105
    if role == "admin":
        created = subprocess.run(  # noqa: S603
            [str(BIN / "blogapi"), "create-admin", "--email", email, "--name", "Fuzz preflight"],
            cwd=ROOT,
            env={**env, "BLOGAPI_ADMIN_PASSWORD": password},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if created.returncode != 0:
            raise SetupError(f"blogapi create-admin failed: {created.stdout}{created.stderr}")
    else:
        body = json.dumps({"name": "Fuzz preflight", "email": email, "password": password}).encode()
        status, content = http(
            "POST", f"{base_url}/api/v1/users", data=body, headers={"Content-Type": "application/json"}
        )
        if status != 201:
            raise SetupError(f"sign-up answered {status}: {content[:300]!r}")
    form = urllib.parse.urlencode({"username": email, "password": password}).encode()
    status, content = http(
        "POST",
        f"{base_url}/api/v1/auth/token",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    if status != 200:
        raise SetupError(f"login answered {status}: {content[:300]!r}")
    token = json.loads(content)["access_token"]
    status, content = http("GET", f"{base_url}/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    if status != 200 or json.loads(content)["is_admin"] != (role == "admin"):
        raise SetupError(
            f"GET /api/v1/users/me with a fresh {role} token answered {status}: {content[:300]!r}"
        )


@contextlib.contextmanager
def running_service(database_url: str, reports: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """uvicorn serving a migrated `database_url`: its base URL and environment."""
    env = service_environment(database_url)
    migrate = subprocess.run(  # noqa: S603
        [str(BIN / "blogapi"), "db", "upgrade"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if migrate.returncode != 0:
        raise SetupError(f"blogapi db upgrade failed:\n{migrate.stdout}{migrate.stderr}")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = reports / "server.log"
    with log.open("wb") as log_file:
        server = subprocess.Popen(  # noqa: S603
            [str(BIN / "uvicorn"), "blogapi.asgi:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_ready(base_url, server, log)
            yield base_url, env
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait(timeout=15)


# --- schemathesis ------------------------------------------------------------------------


def run_schemathesis(
    base_url: str, env: dict[str, str], role: str, reports: Path, args: argparse.Namespace
) -> int:
    reports.mkdir(parents=True, exist_ok=True)
    command = [
        str(BIN / "schemathesis"),
        "--config-file",
        str(FUZZ / "schemathesis.toml"),
        "run",
        f"{base_url}/openapi.json",
        "--seed",
        str(args.seed),
        "--max-examples",
        str(args.max_examples),
        "--report",
        "junit,ndjson",
        "--report-dir",
        str(reports),
        "--report-junit-path",
        str(reports / "junit.xml"),
        "--report-ndjson-path",
        str(reports / "events.ndjson"),
        "--no-color",
    ]
    if args.workers:
        command += ["--workers", str(args.workers)]
    command += args.schemathesis_args
    # The service's own environment too: the hooks run `blogapi create-admin` against its database.
    fuzz_env = {
        **env,
        "SCHEMATHESIS_HOOKS": str(FUZZ / "hooks.py"),
        "BLOGAPI_FUZZ_URL": base_url,
        "BLOGAPI_FUZZ_ROLE": role,
        "BLOGAPI_FUZZ_CACHE": str(reports / "cache"),
        "HYPOTHESIS_STORAGE_DIRECTORY": str(reports / "hypothesis"),
    }
    with (reports / "schemathesis.txt").open("w", encoding="utf-8") as transcript:
        process = subprocess.Popen(  # noqa: S603
            command, cwd=ROOT, env=fuzz_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            transcript.write(line)
        return process.wait()


def fuzz_backend(backend: str, args: argparse.Namespace) -> list[Outcome]:
    """One schemathesis run per role, each against a fresh database and server of its own.

    A role's run depends on its seed alone, and replays alone with --roles: on one shared
    database the admin's run drew the same emails and Idempotency-Keys as the user's before
    it (one seed), so its sign-ups were all 409 or 422 (seed 4242).
    """
    reports = args.reports / backend
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    outcomes: list[Outcome] = []
    started = time.monotonic()
    for role in args.roles:
        role_reports = reports / role
        role_reports.mkdir()
        role_started = time.monotonic()
        print(f"=== {backend}: fresh database, migrations, uvicorn (seed {args.seed})", flush=True)
        try:
            with (
                fresh_database(backend, args) as database_url,
                running_service(database_url, role_reports) as service,
            ):
                base_url, env = service
                print(f"=== {backend}: schemathesis as a fresh {role}", flush=True)
                check_auth(base_url, env, role)
                code = run_schemathesis(base_url, env, role, role_reports, args)
        except SetupError as exc:
            outcomes.append(Outcome(f"{backend}/{role}", "error", time.monotonic() - role_started, str(exc)))
            continue
        seconds = time.monotonic() - role_started
        if code == 0:
            outcomes.append(Outcome(f"{backend}/{role}", "passed", seconds, "no failures"))
        else:
            detail = f"schemathesis exited {code}; see {role_reports / 'schemathesis.txt'}"
            outcomes.append(Outcome(f"{backend}/{role}", "failed", seconds, detail))
    print(f"=== {backend}: {time.monotonic() - started:.0f}s in all", flush=True)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.reports = args.reports.resolve()
    started = time.monotonic()
    outcomes = [outcome for backend in args.backends for outcome in fuzz_backend(backend, args)]
    print(f"\n=== fuzz summary ({time.monotonic() - started:.0f}s; reports in {args.reports})")
    for outcome in outcomes:
        print(f"{outcome.backend:<18} {outcome.status:<7} {outcome.seconds:6.0f}s  {outcome.detail}")
    return 0 if outcomes and all(outcome.status == "passed" for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
