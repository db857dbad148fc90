"""Ending a session holds at once in every process (issue 11): two servers on one database.

Each process keeps its own cache of verified token signatures (auth/security.py); whether
the token's session is still open is read from the database on every request, so a logout
or a refresh reuse seen by one process is seen by the other at its next request.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from conftest import PASSWORD
from fault_support import free_port, serve, server_env

from blogapi.config import Settings
from blogapi.db import Database
from blogapi.users import service as users_service
from blogapi.users.schemas import UserCreate

TOKEN = "/api/v1/auth/token"
ME = "/api/v1/users/me"
EMAIL = "ann@example.com"


@contextlib.asynccontextmanager
async def server(database_url: str, directory: Path) -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "blogapi.asgi:app", "--port", str(port), "--no-access-log"]
    async with (
        serve(argv, server_env(database_url), directory, port) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=60) as client,
    ):
        yield client


async def create_ann(database: Database, settings: Settings) -> None:
    async with database.sessionmaker.begin() as session:
        await users_service.create_user(
            session, UserCreate(name="Ann", email=EMAIL, password=PASSWORD), settings
        )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_logout_in_one_process_refuses_the_token_in_another_at_once(
    database_url: str, database: Database, settings: Settings, tmp_path: Path
) -> None:
    await create_ann(database, settings)
    async with server(database_url, tmp_path) as first, server(database_url, tmp_path) as second:
        tokens = (await first.post(TOKEN, data={"username": EMAIL, "password": PASSWORD})).json()
        headers = bearer(tokens["access_token"])
        # Both processes have verified (and cached) the token's signature.
        assert (await first.get(ME, headers=headers)).status_code == 200
        assert (await second.get(ME, headers=headers)).status_code == 200

        assert (await first.post("/api/v1/auth/logout", headers=headers)).status_code == 204

        assert (await second.get(ME, headers=headers)).status_code == 401
        assert (await second.post("/api/v1/posts", json={"title": "t"}, headers=headers)).status_code == 401
        refreshed = await second.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert refreshed.status_code == 401


async def test_a_refresh_token_reused_in_another_process_ends_the_session_in_both(
    database_url: str, database: Database, settings: Settings, tmp_path: Path
) -> None:
    await create_ann(database, settings)
    async with server(database_url, tmp_path) as first, server(database_url, tmp_path) as second:
        stolen = (await first.post(TOKEN, data={"username": EMAIL, "password": PASSWORD})).json()
        thief = (
            await first.post("/api/v1/auth/refresh", json={"refresh_token": stolen["refresh_token"]})
        ).json()
        assert (await first.get(ME, headers=bearer(thief["access_token"]))).status_code == 200

        reused = await second.post("/api/v1/auth/refresh", json={"refresh_token": stolen["refresh_token"]})

        assert reused.status_code == 401
        assert reused.json()["type"] == "https://blogapi.dev/problems/refresh-token-reused"
        assert (await first.get(ME, headers=bearer(thief["access_token"]))).status_code == 401
        assert (await second.get(ME, headers=bearer(stolen["access_token"]))).status_code == 401
