"""Settings: no built-in secret, one key per install, one place for relative paths."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager
from conftest import PASSWORD, TEST_SECRET, upgrade
from pydantic import ValidationError

from blogapi.config import MIN_SECRET_KEY_LENGTH, Environment, Settings, load_or_create_secret_key
from blogapi.db import Database
from blogapi.main import create_app

BLOGAPI = str(Path(sys.executable).parent / "blogapi")
ME = "/api/v1/users/me"
# The key every install used to sign with when SECRET_KEY was unset (it is public).
FORMER_DEFAULT_KEY = "dev-secret-key-change-me-dev-secret-key"
CREATED = "created a random key"


@pytest.fixture(autouse=True)
def settings_only_from_the_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "SECRET_KEY", "SECRET_KEY_FILE", "ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def development_settings(data_dir: Path, **overrides: object) -> Settings:
    return Settings(environment=Environment.DEVELOPMENT, data_dir=data_dir, _env_file=None, **overrides)  # type: ignore[arg-type]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the install's key -------------------------------------------------------------------------


async def test_a_token_signed_with_any_key_but_the_installs_is_401(
    database_url: str, database: Database, tmp_path: Path
) -> None:
    settings = development_settings(tmp_path / "data", database_url=database_url)
    app = create_app(settings, database)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = {"name": "Ada", "email": "ada@example.com", "password": PASSWORD}
            user_id = (await client.post("/api/v1/users", json=body)).json()["id"]
            login = await client.post(
                "/api/v1/auth/token", data={"username": body["email"], "password": PASSWORD}
            )
            token = login.json()["access_token"]
            now = datetime.now(UTC)
            session_id = jwt.decode(token, options={"verify_signature": False})["sid"]
            claims = {"sub": str(user_id), "sid": session_id, "iat": now, "exp": now + timedelta(hours=1)}
            forged = {
                key: jwt.encode(claims, key, algorithm="HS256")
                for key in (FORMER_DEFAULT_KEY, TEST_SECRET, "another key that is long enough 0123456789")
            }
            genuine = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
            answers = {
                key: (await client.get(ME, headers={"Authorization": f"Bearer {value}"})).status_code
                for key, value in forged.items()
            }
    assert genuine.status_code == 200, genuine.text
    assert answers == dict.fromkeys(forged, 401)


def test_without_secret_key_a_development_install_creates_its_key_once_owner_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    with caplog.at_level(logging.INFO, logger="blogapi.config"):
        first = development_settings(data_dir)
        second = development_settings(data_dir)
    key = first.secret_key.get_secret_value()
    key_file = data_dir / "secret_key"
    assert first.secret_key_file == key_file
    assert key_file.read_text().strip() == key
    assert len(key) >= MIN_SECRET_KEY_LENGTH
    assert mode_of(key_file) == 0o600
    assert mode_of(data_dir) == 0o700
    assert second.secret_key.get_secret_value() == key
    created = [record.getMessage() for record in caplog.records if CREATED in record.getMessage()]
    assert len(created) == 1
    assert str(key_file) in created[0]
    assert key not in caplog.text
    assert sorted(data_dir.iterdir()) == [key_file]  # no temporary file left behind


def test_secret_key_file_names_where_the_key_is_kept(tmp_path: Path) -> None:
    settings = development_settings(tmp_path / "data", secret_key_file=tmp_path / "keys" / "blogapi")
    assert (tmp_path / "keys" / "blogapi").read_text().strip() == settings.secret_key.get_secret_value()
    assert not (tmp_path / "data" / "secret_key").exists()


def test_a_set_secret_key_is_used_and_no_key_file_is_made(tmp_path: Path) -> None:
    settings = development_settings(tmp_path / "data", secret_key=TEST_SECRET)
    assert settings.secret_key.get_secret_value() == TEST_SECRET
    assert not (tmp_path / "data").exists()


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    key_file = tmp_path / "data" / "secret_key"
    starts = 16
    barrier = threading.Barrier(starts)

    def start(_: int) -> str:
        barrier.wait()
        return load_or_create_secret_key(key_file)

    with ThreadPoolExecutor(starts) as pool:
        keys = set(pool.map(start, range(starts)))
    assert keys == {key_file.read_text().strip()}
    assert sorted(key_file.parent.iterdir()) == [key_file]


def test_the_loser_of_a_race_to_create_the_key_uses_the_winners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "secret_key"
    winners_key = "w" * 64
    link = os.link

    def link_after_another_process(source: str, target: Path) -> None:
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(descriptor, winners_key.encode())
        os.close(descriptor)
        link(source, target)

    monkeypatch.setattr(os, "link", link_after_another_process)
    assert load_or_create_secret_key(key_file) == winners_key
    assert sorted(tmp_path.iterdir()) == [key_file]


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_a_key_file_other_users_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    key = development_settings(tmp_path).secret_key.get_secret_value()
    (tmp_path / "secret_key").chmod(mode)
    with pytest.raises(ValidationError, match="chmod 600") as refused:
        development_settings(tmp_path)
    assert key not in str(refused.value)


def test_a_key_file_with_a_short_key_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "secret_key"
    key_file.write_text("short-key\n")
    key_file.chmod(0o600)
    with pytest.raises(ValidationError, match="fewer than") as refused:
        development_settings(tmp_path)
    assert "short-key" not in str(refused.value)


# --- production and test need a key ------------------------------------------------------------


SHORT_KEY = "kX9vQ2mZ7wR4tY8pL3nB6hJ1dF5gS0c"  # 31 characters


def _pieces(key: str, size: int = 4) -> set[str]:
    return {key[start : start + size] for start in range(len(key) - size + 1)}


@pytest.mark.parametrize("secret", ["", SHORT_KEY])
def test_production_refuses_an_unset_or_short_key_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv("SECRET_KEY", secret)
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="SECRET_KEY must be set") as refused:
        Settings(data_dir=tmp_path, _env_file=None)
    message = str(refused.value)
    assert not any(piece in message for piece in _pieces(secret)), message
    assert "secrets.token_urlsafe" in message
    assert list(tmp_path.iterdir()) == []


def test_production_without_secret_key_never_uses_a_key_file(tmp_path: Path) -> None:
    development_settings(tmp_path)  # the install has a development key
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(environment=Environment.PRODUCTION, data_dir=tmp_path, _env_file=None)


def test_production_accepts_a_long_random_key(tmp_path: Path) -> None:
    settings = Settings(
        environment=Environment.PRODUCTION, secret_key="x" * 48, data_dir=tmp_path, _env_file=None
    )
    assert settings.secret_key.get_secret_value() == "x" * 48
    assert list(tmp_path.iterdir()) == []


def test_the_test_environment_refuses_an_unset_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY must be set when ENVIRONMENT=test"):
        Settings(environment=Environment.TEST, data_dir=tmp_path, _env_file=None)


# --- one place for the data --------------------------------------------------------------------


def test_the_default_database_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    settings = development_settings(tmp_path, secret_key=TEST_SECRET)
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'blogapi.db'}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///blogapi.db", "sqlite+aiosqlite:///{data_dir}/blogapi.db"),
        ("sqlite+aiosqlite:///./sub/x.db?timeout=3", "sqlite+aiosqlite:///{data_dir}/sub/x.db?timeout=3"),
        ("sqlite+aiosqlite:////srv/blogapi.db", "sqlite+aiosqlite:////srv/blogapi.db"),
        ("sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
        ("sqlite+aiosqlite://", "sqlite+aiosqlite://"),
        (
            "sqlite+aiosqlite:///file:x?mode=memory&cache=shared&uri=true",
            "sqlite+aiosqlite:///file:x?mode=memory&cache=shared&uri=true",
        ),
        ("postgresql://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
    ],
)
def test_a_relative_sqlite_path_is_resolved_in_the_data_dir_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    data_dir = tmp_path / "data"
    resolved = set()
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        resolved.add(development_settings(data_dir, database_url=given, secret_key=TEST_SECRET).database_url)
    assert resolved == {expected.format(data_dir=data_dir)}


def test_a_relative_data_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="DATA_DIR must be an absolute path"):
        development_settings(Path("data"), secret_key=TEST_SECRET)


def _command_env(data_dir: Path, **variables: str) -> dict[str, str]:
    unset = ("DATABASE_URL", "SECRET_KEY", "SECRET_KEY_FILE", "ENVIRONMENT")
    env = {name: value for name, value in os.environ.items() if name not in unset}
    return env | {"DATA_DIR": str(data_dir)} | variables


def test_commands_run_from_other_folders_use_one_database_in_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    folders = [tmp_path / "one", tmp_path / "two"]
    for folder in folders:
        folder.mkdir()

    def blogapi(folder: Path, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BLOGAPI, *args],
            cwd=folder,
            env=_command_env(data_dir, **variables),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    upgraded = blogapi(folders[0], "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    current = blogapi(folders[1], "db", "current")
    assert "(head)" in current.stdout, current.stdout + current.stderr
    relative = blogapi(folders[1], "db", "current", DATABASE_URL="sqlite:///blogapi.db")
    assert "(head)" in relative.stdout, relative.stdout + relative.stderr
    assert (data_dir / "blogapi.db").exists()
    assert [list(folder.iterdir()) for folder in folders] == [[], []]
    assert mode_of(data_dir / "secret_key") == 0o600
    assert CREATED in upgraded.stderr
    assert CREATED not in current.stderr + relative.stderr


# --- every process of an install ---------------------------------------------------------------


def _start_server(
    folder: Path, env: dict[str, str], number: int
) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = folder / f"server-{number}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [BLOGAPI, "serve", "--port", str(port)],
            cwd=folder,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, f"http://127.0.0.1:{port}", log


def _output(log: Path) -> str:
    return log.read_text(errors="replace")


@contextlib.asynccontextmanager
async def _servers(count: int, env: dict[str, str], folder: Path) -> AsyncIterator[list[tuple[str, Path]]]:
    """`count` server processes started together (none waits for another); their URLs and logs."""
    started: list[tuple[subprocess.Popen[bytes], str, Path]] = []
    try:
        for number in range(count):
            started.append(await asyncio.to_thread(_start_server, folder, env, number))
        for process, url, log in started:
            await _wait_ready(process, url, log)
        yield [(url, log) for _, url, log in started]
    finally:
        for process, _, _ in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process, _, _ in started:
            await asyncio.to_thread(process.wait, 30)


async def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=2) as probe:
        for _ in range(240):
            if process.poll() is not None:
                pytest.fail(f"the server exited {process.returncode}:\n{_output(log)[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if (await probe.get("/health/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.25)
    pytest.fail(f"the server never became ready:\n{_output(log)[-3000:]}")


async def test_two_processes_of_one_install_accept_each_others_tokens(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    await asyncio.to_thread(upgrade, f"sqlite+aiosqlite:///{data_dir / 'blogapi.db'}")
    assert not (data_dir / "secret_key").exists()  # both servers start without a key
    env = _command_env(data_dir, ENVIRONMENT="development")
    async with _servers(2, env, tmp_path) as servers:
        (first, first_log), (second, second_log) = servers
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"name": "Ada", "email": "ada@example.com", "password": PASSWORD}
            assert (await client.post(f"{first}/api/v1/users", json=body)).status_code == 201
            tokens = []
            for server in (first, second):
                login = await client.post(
                    f"{server}/api/v1/auth/token", data={"username": body["email"], "password": PASSWORD}
                )
                assert login.status_code == 200, login.text
                tokens.append(login.json()["access_token"])
            answers = [
                (await client.get(f"{server}{ME}", headers={"Authorization": f"Bearer {token}"})).status_code
                for server, token in ((second, tokens[0]), (first, tokens[1]))
            ]
        logs = [_output(first_log), _output(second_log)]
    assert answers == [200, 200]
    assert mode_of(data_dir / "secret_key") == 0o600
    assert sum(log.count(CREATED) for log in logs) == 1, logs
