"""A Python client generated from /openapi.json: generated without warnings, typed, and working.

openapi-python-client pins a typer older than ours, so it lives in an environment of its own
(tests/client/pyproject.toml and uv.lock), synced here on demand into .cache/client-venv.
The generated package runs there too (it needs attrs, which blogapi does not): against a
real server, by tests/client/drive.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from conftest import TEST_SECRET, database_env

from blogapi.config import Settings
from blogapi.db import Database
from blogapi.main import create_app

REPOSITORY = Path(__file__).resolve().parent.parent
CLIENT_PROJECT = REPOSITORY / "tests" / "client"
CLIENT_ENVIRONMENT = REPOSITORY / ".cache" / "client-venv"
UV = REPOSITORY / ".cache" / "uv" / "bin" / "uv"
PACKAGE = "blogapi_client"
TIMEOUT = 300


def _run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT, check=False, env=env, cwd=cwd
    )


def _tool_env() -> dict[str, str]:
    # The tool environment's bin first: the generator formats its output with its own ruff.
    return os.environ | {"PATH": f"{CLIENT_ENVIRONMENT / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="session")
def generated_client(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The folder holding the generated package, and what the generator printed."""
    assert UV.exists(), f"{UV} is missing: run `make install` first"
    sync = _run(
        [str(UV), "sync", "--frozen", "--quiet", "--project", str(CLIENT_PROJECT)],
        env=os.environ
        | {
            "UV_PROJECT_ENVIRONMENT": str(CLIENT_ENVIRONMENT),
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_PYTHON": "python3",
        },
    )
    assert sync.returncode == 0, sync.stdout + sync.stderr
    folder = tmp_path_factory.mktemp("client")
    settings = Settings(database_url="sqlite+aiosqlite:///:memory:", secret_key=TEST_SECRET, _env_file=None)
    document = folder / "openapi.json"
    document.write_text(json.dumps(create_app(settings).openapi()))
    generated = _run(
        [
            str(CLIENT_ENVIRONMENT / "bin" / "openapi-python-client"),
            "generate",
            "--path",
            str(document),
            "--output-path",
            str(folder / PACKAGE),
            "--meta",
            "none",
        ],
        env=_tool_env(),
    )
    output = generated.stdout + generated.stderr
    assert generated.returncode == 0, output
    return folder, output


def test_the_client_is_generated_without_warnings(generated_client: tuple[Path, str]) -> None:
    folder, output = generated_client
    assert "warning" not in output.lower(), output
    assert "error" not in output.lower(), output
    assert (folder / PACKAGE / "api" / "users" / "create_user.py").exists()


def test_the_generated_functions_are_named_by_operation(generated_client: tuple[Path, str]) -> None:
    folder, _ = generated_client
    names = {path.stem for path in (folder / PACKAGE / "api").glob("*/*.py")} - {"__init__"}
    assert {"create_user", "issue_token", "create_post", "list_posts", "read_user", "list_users"} <= names
    assert not [name for name in names if "api_v1" in name]


def test_the_driver_type_checks_against_the_generated_client(generated_client: tuple[Path, str]) -> None:
    """mypy --strict over drive.py: results are typed, and anonymous reads take a plain Client."""
    folder, _ = generated_client
    checked = _run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--python-executable",
            str(CLIENT_ENVIRONMENT / "bin" / "python"),
            str(CLIENT_PROJECT / "drive.py"),
        ],
        cwd=folder,  # no project config: the generated package is found beside the document
        env=os.environ | {"MYPYPATH": str(folder)},
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def _server(database_url: str, directory: Path) -> AsyncIterator[str]:
    """`blogapi serve` on a free port, until the block ends; its base URL once ready."""
    port = _free_port()
    env = os.environ | database_env(database_url) | {"SECRET_KEY": TEST_SECRET, "ENVIRONMENT": "test"}
    blogapi = Path(sys.executable).parent / "blogapi"
    log = directory / "server.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(  # noqa: ASYNC220  (started once; waiting is polled below)
            [str(blogapi), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=directory,  # no stray .env from the working tree
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as probe:
            while True:
                assert process.poll() is None, log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "the server never became ready"
                try:
                    if (await probe.get("/health/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
        yield base_url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)
    assert "Traceback" not in log.read_text(errors="replace")


async def test_the_generated_client_signs_up_logs_in_posts_pages_and_reads_409_and_422(
    generated_client: tuple[Path, str], database_url: str, database: Database, tmp_path: Path
) -> None:
    """Runs on each backend; `database` empties the tables the server wrote afterwards."""
    folder, _ = generated_client
    async with _server(database_url, tmp_path) as base_url:
        driven = await asyncio.to_thread(
            _run,
            [str(CLIENT_ENVIRONMENT / "bin" / "python"), str(CLIENT_PROJECT / "drive.py"), base_url],
            env=_tool_env() | {"PYTHONPATH": str(folder)},
        )
    assert driven.returncode == 0, driven.stdout + driven.stderr
    assert "driven:" in driven.stdout
