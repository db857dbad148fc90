"""`Idempotency-Key` for POSTs: a retried request returns the first one's response.

The key row is written in the request's own transaction, together with the resource it
creates, so either both exist or neither does. Two requests with one key race on the
unique constraint: the loser waits for the winner's commit (PostgreSQL, MariaDB) or its
turn at the write lock (SQLite), then replays what the winner stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Annotated

from fastapi import Header
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import String, Text, UniqueConstraint, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from blogapi.config import Settings
from blogapi.db import Base, UTCDateTime, binary_string, utcnow, violates
from blogapi.errors import Conflict, InvalidInput

KEY_MAX = 255
OWNER_MAX = 64
ANONYMOUS = "anonymous"

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=KEY_MAX,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry-safe creation: a retry with the same key and body returns the first response.",
    ),
]


CREATED_HEADERS = {
    "Location": {"description": "The new resource.", "schema": {"type": "string"}},
    "ETag": {"description": "The new resource's version.", "schema": {"type": "string"}},
}


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_key"
    __table_args__ = (UniqueConstraint("owner", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(binary_string(OWNER_MAX))
    key: Mapped[str] = mapped_column(binary_string(KEY_MAX))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None]
    response_body: Mapped[str | None] = mapped_column(Text)
    location: Mapped[str | None] = mapped_column(String(255))
    etag: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """A request carrying a key: either a replay to return, or a record to complete."""

    replay: Response | None
    record: IdempotencyRecord | None


def fingerprint(secret: bytes, route: str, body: BaseModel) -> str:
    # Keyed: the body may hold a password, and this digest is stored.
    canonical = json.dumps([route, body.model_dump(mode="json")], sort_keys=True, separators=(",", ":"))
    return hmac.new(secret, canonical.encode(), hashlib.sha256).hexdigest()


def _replay(record: IdempotencyRecord, digest: str) -> Response:
    if not hmac.compare_digest(record.fingerprint, digest):
        raise InvalidInput("this Idempotency-Key was used with a different request body")
    if record.status_code is None or record.response_body is None:
        raise Conflict("a request with this Idempotency-Key is still in progress; retry shortly")
    headers = {"Idempotent-Replayed": "true"}
    if record.location:
        headers["Location"] = record.location
    if record.etag:
        headers["ETag"] = record.etag
    return Response(
        record.response_body, status_code=record.status_code, headers=headers, media_type="application/json"
    )


async def begin(
    session: AsyncSession, settings: Settings, *, owner: str, key: str | None, route: str, body: BaseModel
) -> IdempotentRequest:
    """Claim `key` for this request, or find the response of the request that claimed it."""
    if key is None:
        return IdempotentRequest(None, None)
    digest = fingerprint(settings.secret_key.get_secret_value().encode(), route, body)
    ttl = timedelta(hours=settings.idempotency_key_hours)
    now = utcnow()
    scope = (IdempotencyRecord.owner == owner, IdempotencyRecord.key == key)
    await session.execute(delete(IdempotencyRecord).where(*scope, IdempotencyRecord.expires_at <= now))
    existing = await session.scalar(select(IdempotencyRecord).where(*scope))
    if existing is not None:
        return IdempotentRequest(_replay(existing, digest), None)
    record = IdempotencyRecord(owner=owner, key=key, fingerprint=digest, expires_at=now + ttl)
    try:
        async with session.begin_nested():
            session.add(record)
    except IntegrityError as exc:
        if not violates(exc, "uq_idempotency_key_owner_key"):
            raise
        # Another request claimed the key and has committed by now: replay its response.
        winner = await session.scalar(
            select(IdempotencyRecord).where(*scope).execution_options(populate_existing=True)
        )
        if winner is None:
            raise Conflict("a request with this Idempotency-Key is still in progress; retry shortly") from exc
        return IdempotentRequest(_replay(winner, digest), None)
    return IdempotentRequest(None, record)


async def complete(
    session: AsyncSession, request: IdempotentRequest, body: BaseModel, location: str, etag: str
) -> Response:
    """The 201 for a newly created resource, stored for replays when a key was sent."""
    content = body.model_dump_json()
    if request.record is not None:
        request.record.status_code = HTTPStatus.CREATED
        request.record.response_body = content
        request.record.location = location
        request.record.etag = etag
        await session.flush()
    return Response(
        content,
        status_code=HTTPStatus.CREATED,
        headers={"Location": location, "ETag": etag},
        media_type="application/json",
    )


def owner_of(user_id: int | None) -> str:
    return ANONYMOUS if user_id is None else f"user:{user_id}"
