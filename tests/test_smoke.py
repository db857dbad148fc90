"""The README's run command, started for real: it migrates SQLite and serves /health/ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

REPOSITORY = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_make_run_serves_a_migrated_sqlite_database(tmp_path: Path) -> None:
    port = _free_port()
    env = os.environ | {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'run.db'}"}
    server = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"PORT={port}"],
        cwd=REPOSITORY,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert ready is not None, "the server never answered"
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok"}
        docs = httpx.get(f"http://127.0.0.1:{port}/docs", timeout=5)
        assert docs.status_code == 200
        signup = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/users",
            json={"name": "Smoke", "email": "smoke@example.com", "password": "long enough"},
            timeout=10,
        )
        assert signup.status_code == 201
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert (tmp_path / "run.db").exists()
    assert b"Traceback" not in output
