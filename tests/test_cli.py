"""The `blogapi` command, run as a user runs it: a subprocess against a real database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import IO

import httpx
import jwt
import pytest
from alembic.script import ScriptDirectory
from conftest import PASSWORD, Accounts, database_env, upgrade
from pwdlib import PasswordHash
from sqlalchemy import URL, FromClause, func, make_url, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from blogapi.auth.dependencies import TOKEN_URL
from blogapi.cli import alembic_config
from blogapi.config import Settings
from blogapi.posts.models import Post, Tag, post_tag
from blogapi.users.models import User

BLOGAPI = str(Path(sys.executable).parent / "blogapi")


async def blogapi(
    database_url: str,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    environment = os.environ | database_env(database_url) | (env or {})
    return await asyncio.to_thread(
        subprocess.run,
        [BLOGAPI, *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=cwd,
        input=stdin if stdin is not None else "",
    )


async def count(url: str, *tables: FromClause) -> list[int]:
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        counts = [
            int(await connection.scalar(select(func.count()).select_from(table)) or 0) for table in tables
        ]
    await engine.dispose()
    return counts


async def migrate(url: str) -> None:
    await asyncio.to_thread(upgrade, url)


async def test_db_upgrade_then_check_reports_no_drift_and_current_shows_head(
    scratch_database_url: str,
) -> None:
    assert (await blogapi(scratch_database_url, "db", "upgrade")).returncode == 0
    result = await blogapi(scratch_database_url, "db", "check")
    assert result.returncode == 0, result.stderr
    assert "no drift" in result.stdout
    assert "(head)" in (await blogapi(scratch_database_url, "db", "current")).stdout


async def test_db_check_on_an_unmigrated_database_fails(scratch_database_url: str) -> None:
    result = await blogapi(scratch_database_url, "db", "check")
    assert result.returncode == 1


async def test_seed_inserts_the_requested_users_posts_and_tags(scratch_database_url: str) -> None:
    await migrate(scratch_database_url)
    result = await blogapi(
        scratch_database_url, "seed", "--users", "30", "--posts-per-user", "4", "--seed", "7"
    )
    assert result.returncode == 0, result.stderr
    assert "seeded 30 users and 120 posts" in result.stdout
    users, posts, tags, links = await count(
        scratch_database_url, User.__table__, Post.__table__, Tag.__table__, post_tag
    )
    assert (users, posts) == (30, 120)
    assert tags > 0
    assert links > 0


async def test_seeding_counts_each_tags_links_and_dates_each_link_as_its_post(
    scratch_database_url: str,
) -> None:
    await migrate(scratch_database_url)
    for _ in range(2):  # the second run adds to the counts of the first
        result = await blogapi(scratch_database_url, "seed", "--users", "10", "--posts-per-user", "3")
        assert result.returncode == 0, result.stderr
    engine = create_async_engine(scratch_database_url)
    async with engine.connect() as connection:
        links = select(func.count()).where(post_tag.c.tag_id == Tag.id).scalar_subquery()
        miscounted = await connection.scalar(
            select(func.count()).select_from(Tag).where(Tag.post_count != links)
        )
        total = await connection.scalar(select(func.sum(Tag.post_count)))
        misdated = await connection.scalar(
            select(func.count())
            .select_from(post_tag)
            .join(Post, Post.id == post_tag.c.post_id)
            .where(post_tag.c.created_at != Post.created_at)
        )
    await engine.dispose()
    assert (miscounted, misdated) == (0, 0)
    assert total == (await count(scratch_database_url, post_tag))[0] > 0


async def test_seeding_twice_adds_more_users_instead_of_colliding(scratch_database_url: str) -> None:
    await migrate(scratch_database_url)
    for _ in range(2):
        result = await blogapi(scratch_database_url, "seed", "--users", "5", "--posts-per-user", "1")
        assert result.returncode == 0, result.stderr
    assert await count(scratch_database_url, User.__table__) == [10]


async def test_create_admin_takes_the_password_from_the_environment(scratch_database_url: str) -> None:
    await migrate(scratch_database_url)
    result = await blogapi(
        scratch_database_url,
        "create-admin",
        "--email",
        "Root@Example.com",
        "--name",
        "Root",
        env={"BLOGAPI_ADMIN_PASSWORD": "an admin password"},
    )
    assert result.returncode == 0, result.stderr
    assert "an admin password" not in result.stdout + result.stderr
    engine = create_async_engine(scratch_database_url)
    async with engine.connect() as connection:
        row = (await connection.execute(select(User.email, User.is_admin, User.password_hash))).one()
    await engine.dispose()
    assert row.email == "root@example.com"
    assert row.is_admin is True or row.is_admin == 1
    assert PasswordHash.recommended().verify("an admin password", row.password_hash)


async def test_create_admin_with_a_taken_email_fails_with_a_message(scratch_database_url: str) -> None:
    await migrate(scratch_database_url)
    env = {"BLOGAPI_ADMIN_PASSWORD": "an admin password"}
    await blogapi(scratch_database_url, "create-admin", "--email", "a@example.com", "--name", "A", env=env)
    result = await blogapi(
        scratch_database_url, "create-admin", "--email", "A@example.com", "--name", "A", env=env
    )
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert "Traceback" not in result.stderr


async def test_create_admin_with_an_invalid_email_or_short_password_fails_with_a_message(
    scratch_database_url: str,
) -> None:
    await migrate(scratch_database_url)
    result = await blogapi(
        scratch_database_url, "create-admin", "--email", "not-an-email", "--name", "A",
        env={"BLOGAPI_ADMIN_PASSWORD": "short"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "email" in result.stderr
    assert "password" in result.stderr
    assert "short" not in result.stderr.replace("too short", "").replace("at least", "")
    assert "Traceback" not in result.stderr


# Every mistake ends in one or two lines on stderr and exit status 1: no traceback, nothing secret.

URL_PASSWORD = "url-password-0123"


def closed_port() -> int:
    """A port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def assert_fails_clearly(result: subprocess.CompletedProcess[str], *secrets: str) -> str:
    """The failure is one or two lines on stderr that say what is wrong; returns them."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, result.stderr
    assert "Traceback" not in result.stderr
    for secret in secrets:
        assert secret not in result.stdout + result.stderr
    return result.stderr


@pytest.mark.parametrize("scheme", ["postgresql+asyncpg", "mysql+aiomysql"], ids=["postgresql", "mariadb"])
async def test_a_database_server_that_is_down_is_one_line_without_the_url_password(scheme: str) -> None:
    url = f"{scheme}://root:{URL_PASSWORD}@127.0.0.1:{closed_port()}/blogapi"
    for command in (["db", "upgrade"], ["db", "current"], ["seed", "--users", "1"]):
        stderr = assert_fails_clearly(await blogapi(url, *command), URL_PASSWORD)
        assert "cannot connect" in stderr
        assert "root:***@127.0.0.1" in stderr


async def test_debug_shows_the_traceback_as_an_option_or_from_the_environment() -> None:
    url = f"postgresql+asyncpg://root@127.0.0.1:{closed_port()}/blogapi"
    assert "Traceback" in (await blogapi(url, "--debug", "db", "current")).stderr
    assert "Traceback" in (await blogapi(url, "db", "current", env={"BLOGAPI_DEBUG": "1"})).stderr


@pytest.mark.parametrize(
    "url",
    [f"postgresql://root:{URL_PASSWORD}@db.example:port/blogapi", f"not a url {URL_PASSWORD}"],
    ids=["bad-port", "no-scheme"],
)
async def test_a_malformed_database_url_is_one_line_without_the_url(url: str) -> None:
    stderr = assert_fails_clearly(await blogapi(url, "db", "upgrade"), URL_PASSWORD, "db.example")
    assert "DATABASE_URL is not a database URL" in stderr


@pytest.mark.parametrize(
    "url", ["oracle+cx_oracle://root@127.0.0.1/blogapi", "postgresql+psycopg2://root@127.0.0.1/blogapi"]
)
async def test_an_unknown_or_missing_driver_is_one_line_naming_the_supported_ones(url: str) -> None:
    stderr = assert_fails_clearly(await blogapi(url, "db", "current"))
    assert "postgresql+asyncpg://" in stderr


async def test_a_misspelled_environment_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'blogapi.db'}"
    for command in (["db", "upgrade"], ["serve", "--port", str(closed_port())]):
        stderr = assert_fails_clearly(await blogapi(url, *command, env={"ENVIRONMENT": "prod"}))
        assert "ENVIRONMENT" in stderr
        assert "production" in stderr


@pytest.mark.parametrize("key", [None, "k3y-0f-31-characters-abcdefghij"], ids=["without-key", "short-key"])
async def test_production_without_a_good_secret_key_says_so_without_printing_the_key(
    tmp_path: Path, key: str | None
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'blogapi.db'}"
    env = {"ENVIRONMENT": "production"} | ({"SECRET_KEY": key} if key else {})
    secrets = [key, key[:9]] if key else []
    for command in (["db", "upgrade"], ["serve", "--port", str(closed_port())]):
        stderr = assert_fails_clearly(await blogapi(url, *command, env=env), *secrets)
        assert "SECRET_KEY must be set" in stderr


async def test_create_admin_on_a_new_empty_database_says_to_upgrade_without_the_password_or_hash(
    scratch_database_url: str, tmp_path: Path
) -> None:
    env = {"BLOGAPI_ADMIN_PASSWORD": "the admin's password"}
    args = ("create-admin", "--email", "root@example.com", "--name", "Root")
    result = await blogapi(scratch_database_url, *args, env=env)
    stderr = assert_fails_clearly(result, "the admin's password", "$argon2")
    assert "blogapi db upgrade" in stderr


@pytest.mark.backends("sqlite")
async def test_create_admin_run_from_another_folder_says_which_database_has_no_schema(
    scratch_database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    env = {"BLOGAPI_ADMIN_PASSWORD": "the admin's password", "DATA_DIR": str(data_dir)}
    args = ("create-admin", "--email", "root@example.com", "--name", "Root")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = await blogapi("sqlite+aiosqlite:///./blogapi.db", *args, env=env, cwd=elsewhere)
    stderr = assert_fails_clearly(result, "the admin's password", "$argon2")
    # A relative path is the install's database in DATA_DIR, not one in the current folder.
    assert f"sqlite+aiosqlite:///{data_dir / 'blogapi.db'} has no blogapi schema" in stderr
    assert not (elsewhere / "blogapi.db").exists()


# A database that does not exist yet: `db upgrade` creates it, or says how.


async def run_as_root(server_url: str, *statements: str) -> None:
    url = make_url(server_url)
    admin = url.set(database="postgres" if url.get_backend_name() == "postgresql" else "")
    engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


def drop_database(url: URL) -> str:
    if url.get_backend_name() == "postgresql":
        return f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'
    return f"DROP DATABASE IF EXISTS `{url.database}`"


@pytest.fixture
async def new_database_url(scratch_database_url: str) -> AsyncIterator[URL]:
    """A database name that does not exist yet on the server; dropped afterwards."""
    url = make_url(scratch_database_url)
    url = url.set(database=f"{url.database}_new")
    await run_as_root(scratch_database_url, drop_database(url))
    yield url
    await run_as_root(scratch_database_url, drop_database(url))


MISSING_DATABASE_THROUGH_PGBOUNCER = (
    "PgBouncer answers a login to a database that does not exist with PostgreSQL's error only"
    " the first time: for server_login_retry seconds after, it holds clients of that database"
    " (query_wait_timeout) or refuses them with 'server login has been failing'; a database is"
    " created against PostgreSQL directly (docs/scaling.md)"
)


@pytest.mark.backends("postgresql", "mariadb")
@pytest.mark.not_through_pgbouncer(MISSING_DATABASE_THROUGH_PGBOUNCER)
async def test_a_database_that_does_not_exist_is_one_line_saying_db_upgrade_creates_it(
    new_database_url: URL,
) -> None:
    url = new_database_url.render_as_string(hide_password=False)
    stderr = assert_fails_clearly(await blogapi(url, "db", "current"))
    assert f"{new_database_url.database} does not exist: `blogapi db upgrade` creates it" in stderr


@pytest.mark.backends("postgresql", "mariadb")
@pytest.mark.not_through_pgbouncer(MISSING_DATABASE_THROUGH_PGBOUNCER)
async def test_db_upgrade_creates_a_database_that_does_not_exist_and_says_so(new_database_url: URL) -> None:
    url = new_database_url.render_as_string(hide_password=False)
    result = await blogapi(url, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert f"created database '{new_database_url.database}'" in result.stdout
    assert "upgraded from empty (no schema) to" in result.stdout
    assert "(head)" in (await blogapi(url, "db", "current")).stdout
    if new_database_url.get_backend_name() == "mysql":
        engine = create_async_engine(new_database_url)
        async with engine.connect() as connection:
            charset = await connection.scalar(
                text(
                    "SELECT default_character_set_name FROM information_schema.schemata"
                    " WHERE schema_name = :n"
                ),
                {"n": new_database_url.database},
            )
        await engine.dispose()
        assert charset == "utf8mb4"


@pytest.fixture
async def unprivileged_url(new_database_url: URL) -> AsyncIterator[URL]:
    """The new database's URL for a user who may log in but not create databases."""
    user = f"{new_database_url.database}_user"
    server = new_database_url.render_as_string(hide_password=False)
    if new_database_url.get_backend_name() == "postgresql":
        create, drop = f'CREATE ROLE "{user}" LOGIN', f'DROP ROLE IF EXISTS "{user}"'
    else:
        create, drop = f"CREATE USER '{user}'@'%'", f"DROP USER IF EXISTS '{user}'@'%'"
    await run_as_root(server, drop, create)
    yield new_database_url.set(username=user, password=None)
    await run_as_root(server, drop_database(new_database_url), drop)


@pytest.mark.backends("postgresql", "mariadb")
@pytest.mark.not_through_pgbouncer(
    "it logs in as a role it creates, which PgBouncer's auth_file does not list; what it tests,"
    " a role without CREATEDB, is PostgreSQL's and the same behind a pooler"
)
async def test_db_upgrade_without_the_right_to_create_the_database_prints_the_statements_that_do(
    new_database_url: URL, unprivileged_url: URL
) -> None:
    url = unprivileged_url.render_as_string(hide_password=False)
    stderr = assert_fails_clearly(await blogapi(url, "db", "upgrade"))
    assert "CREATE DATABASE" in stderr
    # What it says to run, run by an administrator, is all the user needs.
    statements = stderr.strip().splitlines()[-1].removeprefix("have an administrator run: ")
    root_url = new_database_url.render_as_string(hide_password=False)
    await run_as_root(root_url, *(statement for statement in statements.split(";") if statement.strip()))
    result = await blogapi(url, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "(head)" in result.stdout


# Migrations commands, as the README writes them.


async def test_db_current_on_an_empty_database_says_it_is_empty(scratch_database_url: str) -> None:
    result = await blogapi(scratch_database_url, "db", "current")
    assert result.returncode == 0, result.stderr
    assert "is empty (no schema): run `blogapi db upgrade`" in result.stdout


async def test_db_upgrade_says_what_it_did_and_that_a_second_run_does_nothing(
    scratch_database_url: str,
) -> None:
    first = await blogapi(scratch_database_url, "db", "upgrade")
    assert "upgraded from empty (no schema) to" in first.stdout
    second = await blogapi(scratch_database_url, "db", "upgrade")
    assert "(head), nothing to do" in second.stdout


async def test_db_upgrade_on_a_schema_from_a_newer_release_says_to_run_that_release(
    scratch_database_url: str,
) -> None:
    await migrate(scratch_database_url)
    engine = create_async_engine(scratch_database_url)
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
    await engine.dispose()
    message = assert_fails_clearly(await blogapi(scratch_database_url, "db", "upgrade"))
    assert "Can't locate revision identified by 'ffffffffffff'" in message
    assert "a newer release of blogapi migrated this database" in message


def head_and_previous() -> tuple[str, str]:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_revision("head")
    assert head is not None
    assert isinstance(head.down_revision, str)
    return head.revision, head.down_revision


async def test_db_downgrade_minus_one_as_the_readme_writes_it_goes_back_one_revision(
    scratch_database_url: str,
) -> None:
    await migrate(scratch_database_url)
    head, previous = head_and_previous()
    result = await blogapi(scratch_database_url, "db", "downgrade", "-1")
    assert result.returncode == 0, result.stderr
    assert f"downgraded from {head} (head) to {previous}" in result.stdout
    assert (await blogapi(scratch_database_url, "db", "current")).stdout.strip() == previous


async def test_db_downgrade_base_asks_first_and_keeps_the_schema_when_refused(
    scratch_database_url: str,
) -> None:
    await migrate(scratch_database_url)
    result = await blogapi(scratch_database_url, "db", "downgrade", "base", stdin="n\n")
    assert result.returncode == 1
    assert "Remove every blogapi table" in result.stdout
    assert "(head)" in (await blogapi(scratch_database_url, "db", "current")).stdout


async def test_db_downgrade_base_with_yes_removes_the_schema_without_asking(
    scratch_database_url: str,
) -> None:
    await migrate(scratch_database_url)
    result = await blogapi(scratch_database_url, "db", "downgrade", "base", "--yes")
    assert result.returncode == 0, result.stderr
    assert "Remove every" not in result.stdout
    assert "to empty (no schema)" in result.stdout
    assert "is empty" in (await blogapi(scratch_database_url, "db", "current")).stdout


async def test_db_history_lists_every_migration_and_stamp_records_a_revision(
    scratch_database_url: str,
) -> None:
    head, previous = head_and_previous()
    history = await blogapi(scratch_database_url, "db", "history")
    assert f"{previous} -> {head} (head)" in history.stdout
    assert "<base> -> " in history.stdout
    await migrate(scratch_database_url)
    result = await blogapi(scratch_database_url, "db", "stamp", previous)
    assert result.returncode == 0, result.stderr
    assert f"stamped as {previous}" in result.stdout
    assert (await blogapi(scratch_database_url, "db", "current")).stdout.strip() == previous


async def test_an_unknown_revision_is_one_line(scratch_database_url: str) -> None:
    stderr = assert_fails_clearly(await blogapi(scratch_database_url, "db", "upgrade", "nosuchrevision"))
    assert "nosuchrevision" in stderr


async def test_version_prints_the_installed_version() -> None:
    result = await blogapi("sqlite://", "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"blogapi {version('blogapi')}"


# Accounts from the command line.


async def test_demoting_an_admin_takes_effect_on_their_existing_token(
    client: httpx.AsyncClient, accounts: Accounts, database_url: str
) -> None:
    admin, other = await accounts.create(admin=True), await accounts.create()
    url = f"/api/v1/users/{other.id}"
    assert (await client.get(url, headers=admin.headers)).json()["email"] == other.email
    result = await blogapi(database_url, "user", "demote", admin.email.upper())
    assert result.returncode == 0, result.stderr
    assert f"{admin.email} is no longer an admin" in result.stdout
    assert (await client.get(url, headers=admin.headers)).json()["email"] is None


async def test_promoting_a_user_makes_them_an_admin(
    client: httpx.AsyncClient, accounts: Accounts, database_url: str
) -> None:
    user, other = await accounts.create(), await accounts.create()
    url = f"/api/v1/users/{other.id}"
    assert (await client.get(url, headers=user.headers)).json()["email"] is None
    result = await blogapi(database_url, "user", "promote", user.email)
    assert result.returncode == 0, result.stderr
    assert f"{user.email} is now an admin" in result.stdout
    assert (await client.get(url, headers=user.headers)).json()["email"] == other.email


async def test_promoting_an_unknown_email_is_one_line(database_url: str) -> None:
    stderr = assert_fails_clearly(await blogapi(database_url, "user", "promote", "nobody@example.com"))
    assert "no user has the email nobody@example.com" in stderr


async def test_unlock_lets_a_throttled_account_log_in_again(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings, database_url: str
) -> None:
    ann = await accounts.create()
    for _ in range(settings.login_failures_per_account):
        await client.post(TOKEN_URL, data={"username": ann.email, "password": "wrong password"})
    login = {"username": ann.email, "password": PASSWORD}
    assert (await client.post(TOKEN_URL, data=login)).status_code == 429
    result = await blogapi(database_url, "user", "unlock", ann.email)
    assert result.returncode == 0, result.stderr
    assert "may log in again" in result.stdout
    assert (await client.post(TOKEN_URL, data=login)).status_code == 200
    again = await blogapi(database_url, "user", "unlock", ann.email)
    assert "nothing to unlock" in again.stdout


async def test_user_sessions_lists_the_open_sessions_and_logout_all_ends_them(
    client: httpx.AsyncClient, accounts: Accounts, database_url: str
) -> None:
    ann = await accounts.create()
    phone = await client.post(
        TOKEN_URL,
        data={"username": ann.email, "password": PASSWORD},
        headers={"User-Agent": "Phone\x1b[31m/2"},
    )
    phone_session = jwt.decode(phone.json()["access_token"], options={"verify_signature": False})["sid"]
    bob = await accounts.create()

    listed = await blogapi(database_url, "user", "sessions", ann.email.upper())
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{phone_session}\t")
    assert lines[0].endswith("\tPhone[31m/2")  # no escape sequence reaches the terminal
    assert lines[1].startswith(f"{ann.session_id}\t")
    assert "127.0.0.1" in lines[1]

    ended = await blogapi(database_url, "user", "logout-all", ann.email)
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.strip() == "ended 2 sessions"
    assert (await client.get("/api/v1/users/me", headers=ann.headers)).status_code == 401
    assert (await client.get("/api/v1/users/me", headers=bob.headers)).status_code == 200
    assert (await blogapi(database_url, "user", "sessions", ann.email)).stdout.strip() == "no open sessions"


async def test_user_disable_ends_the_sessions_and_refuses_logins_until_enable(
    client: httpx.AsyncClient, accounts: Accounts, database_url: str
) -> None:
    ann = await accounts.create()
    login = {"username": ann.email, "password": PASSWORD}

    disabled = await blogapi(database_url, "user", "disable", ann.email)

    assert disabled.returncode == 0, disabled.stderr
    assert disabled.stdout.strip() == f"{ann.email} is disabled: its sessions have ended"
    assert (await client.get("/api/v1/users/me", headers=ann.headers)).status_code == 401
    assert (await client.post(TOKEN_URL, data=login)).status_code == 401
    enabled = await blogapi(database_url, "user", "enable", ann.email)
    assert enabled.returncode == 0, enabled.stderr
    assert (await client.post(TOKEN_URL, data=login)).status_code == 200


async def test_user_sessions_of_an_unknown_email_is_one_line_and_status_1(database_url: str) -> None:
    for command in ("sessions", "logout-all", "disable", "enable"):
        result = await blogapi(database_url, "user", command, "nobody@example.com")
        assert result.returncode == 1
        assert result.stderr.strip() == "error: no user has the email nobody@example.com"


# `blogapi serve`, as a real server on a free port.

BURN_CPU = "import time\ndeadline = time.monotonic() + 240\nwhile time.monotonic() < deadline: pass"


@contextlib.asynccontextmanager
async def serving(database_url: str, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[Server]:
    """`blogapi serve ARGS` on a free port, once it answers; stopped afterwards."""
    port = closed_port()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(  # noqa: ASYNC220  (started once, waited for below)
            [BLOGAPI, "serve", "--port", str(port), *args],
            env=os.environ | database_env(database_url) | (env or {}),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = Server(f"http://127.0.0.1:{port}", log)
        try:
            async with httpx.AsyncClient(base_url=server.base_url) as client:
                for _ in range(600):
                    assert process.poll() is None, server.output()
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get("/health/live")).status_code == 200:
                            break
                    await asyncio.sleep(0.5)
                else:
                    pytest.fail(f"the server did not start:\n{server.output()}")
            yield server
        finally:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class Server:
    base_url: str
    log: IO[str]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()


async def failures_until_throttled(server: Server, forwarded_for: list[str]) -> list[int]:
    """The statuses of failed logins for new accounts, each with its X-Forwarded-For."""
    statuses = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        for number, address in enumerate(forwarded_for):
            response = await client.post(
                TOKEN_URL,
                data={"username": f"nobody{number}@example.com", "password": "wrong password"},
                headers={"X-Forwarded-For": address},
            )
            statuses.append(response.status_code)
    return statuses


THROTTLE_TWO_PER_ADDRESS = {"LOGIN_FAILURES_PER_ADDRESS": "2", "LOGIN_FAILURES_PER_ACCOUNT": "100"}


@pytest.mark.backends("sqlite")
async def test_serve_ignores_x_forwarded_for_by_default(scratch_database_url: str) -> None:
    await migrate(scratch_database_url)
    async with serving(scratch_database_url, env=THROTTLE_TWO_PER_ADDRESS) as server:
        # Every forged address is the one peer, 127.0.0.1: its third failure is refused.
        statuses = await failures_until_throttled(server, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    assert statuses == [401, 401, 429]


@pytest.mark.backends("sqlite")
async def test_serve_believes_x_forwarded_for_from_a_trusted_proxy(scratch_database_url: str) -> None:
    await migrate(scratch_database_url)
    env = THROTTLE_TWO_PER_ADDRESS | {"TRUSTED_PROXIES": "127.0.0.1"}
    async with serving(scratch_database_url, env=env) as server:
        statuses = await failures_until_throttled(server, ["10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2"])
    assert statuses == [401, 401, 429, 401]


async def test_trusted_proxies_that_are_not_addresses_are_refused_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'blogapi.db'}"
    result = await blogapi(
        url, "serve", "--port", str(closed_port()), env={"TRUSTED_PROXIES": "proxy.example"}
    )
    stderr = assert_fails_clearly(result)
    assert "TRUSTED_PROXIES" in stderr


@pytest.mark.parametrize(
    ("env", "warned"),
    [({}, True), ({"ENVIRONMENT": "production", "SECRET_KEY": "k" * 40}, False)],
    ids=["development", "production"],
)
async def test_serve_on_a_public_address_outside_production_warns(
    tmp_path: Path, env: dict[str, str], warned: bool
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'blogapi.db'}"
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the bind fails after the warning.
    result = await blogapi(url, "serve", "--host", "192.0.2.1", "--port", str(closed_port()), env=env)
    warning = "warning: serving on 192.0.2.1, reachable from other machines, with ENVIRONMENT=development"
    assert (warning in result.stderr) is warned


@pytest.mark.backends("sqlite")
async def test_serve_with_two_workers_starts_on_a_busy_machine_without_restarting_a_worker(
    scratch_database_url: str,
) -> None:
    await migrate(scratch_database_url)
    burners = [subprocess.Popen([sys.executable, "-c", BURN_CPU]) for _ in range(2)]  # noqa: ASYNC220
    try:
        async with serving(scratch_database_url, "--workers", "2") as server:
            for _ in range(600):
                if server.output().count("Application startup complete") == 2:
                    break
                await asyncio.sleep(0.5)
            output = server.output()
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert output.count("Application startup complete") == 2, output
    assert output.count("Started server process") == 2, output
    assert "died" not in output
