from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import text

from blogapi.db import get_database
from blogapi.errors import ServiceUnavailable, error_responses

router = APIRouter(prefix="/health", tags=["health"])


class Health(BaseModel):
    status: str


@router.get("/live")
async def live() -> Health:
    """The process answers."""
    return Health(status="ok")


@router.get("/ready", responses=error_responses(503))
async def ready(request: Request) -> Health:
    """The database answers a query."""
    try:
        async with get_database(request).engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        raise ServiceUnavailable("the database is unreachable") from exc
    return Health(status="ok")
