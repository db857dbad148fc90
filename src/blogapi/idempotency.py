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
from sqlalchemy import String, Text, UniqueConstraint, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from blogapi.config import Settings
from blogapi.db import AnyRow, Base, UTCDateTime, binary_string, utcnow, violates
from blogapi.errors import IdempotencyKeyInUse, IdempotencyKeyReused
from blogapi.validation import in_words

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
    in_words("must be printable ASCII characters without spaces"),
]


CREATED_HEADERS = {
    "Location": {"description": "The new resource.", "schema": {"type": "string"}},
    "ETag": {"description": "The new resource's version.", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored response to an earlier request with the same"
        " Idempotency-Key (absent otherwise).",
        "schema": {"type": "string", "enum": ["true"]},
    },
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
    """A request carrying a key: either a replay to return, or the id of its claim to complete."""

    replay: Response | None
    claim_id: int | None


def fingerprint(secret: bytes, route: str, body: BaseModel) -> str:
    # Keyed: the body may hold a password, and this digest is stored.
    canonical = json.dumps([route, body.model_dump(mode="json")], sort_keys=True, separators=(",", ":"))
    return hmac.new(secret, canonical.encode(), hashlib.sha256).hexdigest()


def _replay(record: AnyRow, digest: str) -> Response:
    if not hmac.compare_digest(record.fingerprint, digest):
        raise IdempotencyKeyReused("this Idempotency-Key was used with a different request body")
    if record.status_code is None or record.response_body is None:
        raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress; retry shortly")
    headers = {"Idempotent-Replayed": "true"}
    if record.location:
        headers["Location"] = record.location
    if record.etag:
        headers["ETag"] = record.etag
    return Response(
        record.response_body, status_code=record.status_code, headers=headers, media_type="application/json"
    )


# Core statements on the request's connection: a writing endpoint may run without a
# session (POST /posts), and these rows are never needed as entities.
_IN_SCOPE = (IdempotencyRecord.owner == bindparam("owner"), IdempotencyRecord.key == bindparam("key"))
_DELETE_EXPIRED = delete(IdempotencyRecord).where(
    *_IN_SCOPE, IdempotencyRecord.expires_at <= bindparam("now")
)
_SELECT = select(
    IdempotencyRecord.fingerprint,
    IdempotencyRecord.status_code,
    IdempotencyRecord.response_body,
    IdempotencyRecord.location,
    IdempotencyRecord.etag,
).where(*_IN_SCOPE)
_CLAIM = insert(IdempotencyRecord).returning(IdempotencyRecord.id)

PRUNE_BATCH = 4
"""Expired keys (of anyone) deleted per claim: more than the one row a claim adds, so the
table holds the live keys and a shrinking remainder of expired ones."""
# SKIP LOCKED: a key another request holds is left for later, so pruning never waits for
# (nor deadlocks with) other requests. SQLite ignores FOR UPDATE: its writers take turns.
_EXPIRED_IDS = (
    select(IdempotencyRecord.id)
    .where(IdempotencyRecord.expires_at <= bindparam("now"))
    .limit(PRUNE_BATCH)
    .with_for_update(skip_locked=True)
)
_DELETE_IDS = delete(IdempotencyRecord).where(IdempotencyRecord.id.in_(bindparam("ids", expanding=True)))
_COMPLETE = update(IdempotencyRecord).where(IdempotencyRecord.id == bindparam("claim_id"))


async def begin(
    connection: AsyncConnection,
    settings: Settings,
    *,
    owner: str,
    key: str | None,
    route: str,
    body: BaseModel,
) -> IdempotentRequest:
    """Claim `key` for this request, or find the response of the request that claimed it."""
    if key is None:
        return IdempotentRequest(None, None)
    digest = fingerprint(settings.secret_key.get_secret_value().encode(), route, body)
    now = utcnow()
    scope = {"owner": owner, "key": key}
    await connection.execute(_DELETE_EXPIRED, {**scope, "now": now})
    expired = list((await connection.scalars(_EXPIRED_IDS, {"now": now})).all())
    if expired:
        await connection.execute(_DELETE_IDS, {"ids": expired})
    existing = (await connection.execute(_SELECT, scope)).one_or_none()
    if existing is not None:
        return IdempotentRequest(_replay(existing, digest), None)
    claim = {
        **scope,
        "fingerprint": digest,
        "expires_at": now + timedelta(hours=settings.idempotency_key_hours),
    }
    try:
        async with connection.begin_nested():
            claim_id = (await connection.execute(_CLAIM, claim)).scalar_one()
    except IntegrityError as exc:
        if not violates(exc, "uq_idempotency_key_owner_key"):
            raise
        # Another request claimed the key and has committed by now: replay its response.
        winner = (await connection.execute(_SELECT, scope)).one_or_none()
        if winner is None:
            raise IdempotencyKeyInUse(
                "a request with this Idempotency-Key is still in progress; retry shortly"
            ) from exc
        return IdempotentRequest(_replay(winner, digest), None)
    return IdempotentRequest(None, claim_id)


async def complete(
    connection: AsyncConnection, request: IdempotentRequest, body: BaseModel, location: str, etag: str
) -> Response:
    """The 201 for a newly created resource, stored for replays when a key was sent."""
    content = body.model_dump_json()
    if request.claim_id is not None:
        await connection.execute(
            _COMPLETE,
            {
                "claim_id": request.claim_id,
                "status_code": HTTPStatus.CREATED,
                "response_body": content,
                "location": location,
                "etag": etag,
            },
        )
    return Response(
        content,
        status_code=HTTPStatus.CREATED,
        headers={"Location": location, "ETag": etag},
        media_type="application/json",
    )


def owner_of(user_id: int | None) -> str:
    return ANONYMOUS if user_id is None else f"user:{user_id}"
