from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncConnection

from blogapi.auth.security import TokenSubject, read_access_token
from blogapi.auth.sessions import service as sessions_service
from blogapi.config import Settings, SettingsDep
from blogapi.db import AnyRow, Database, DatabaseDep, SessionDep, utcnow
from blogapi.errors import Unauthorized
from blogapi.users import service as users_service

TOKEN_URL = "/api/v1/auth/token"  # noqa: S105  (a URL, not a secret)

_required_token = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, refreshUrl="/api/v1/auth/refresh")
_optional_token = OAuth2PasswordBearer(
    tokenUrl=TOKEN_URL, refreshUrl="/api/v1/auth/refresh", auto_error=False
)


INVALID_TOKEN = users_service.CALLER_GONE


def client_address(request: Request) -> str:
    """The address the client connected from (the proxy's, behind one that uvicorn does not trust)."""
    return request.client.host if request.client else "unknown"


def _subject(token: str, settings: Settings) -> TokenSubject:
    subject = read_access_token(token, secret=settings.secret_key.get_secret_value())
    if subject is None:
        raise Unauthorized(INVALID_TOKEN)
    return subject


def _current(user: AnyRow | None) -> AnyRow:
    """The token's user, if the token's session is open (find_caller found it)."""
    if user is None:
        raise Unauthorized(INVALID_TOKEN)
    return user


async def get_caller(token: Annotated[str, Depends(_required_token)], settings: SettingsDep) -> TokenSubject:
    """The subject of a valid token: not yet looked up, so not yet known to be current."""
    return _subject(token, settings)


Caller = Annotated[TokenSubject, Depends(get_caller)]


async def current_user(connection: AsyncConnection, caller: TokenSubject) -> AnyRow:
    """The caller, in a writing request's transaction, which also records the session's use
    (at most once a minute)."""
    user = _current(await users_service.find_caller(connection, caller))
    now = utcnow()
    if sessions_service.is_stale(user.session_last_used_at, now):
        await sessions_service.touch(connection, caller.session_id, now)
    return user


# The caller is a row of the user's columns. A writing request reads it in its own
# transaction (a second connection would hold a second pooled connection); a reading
# request on a connection of its own, closed before the endpoint opens one.


async def get_current_user(caller: Caller, session: SessionDep) -> AnyRow:
    return await current_user(await session.connection(), caller)


async def _viewer(token: str, database: Database, settings: Settings) -> AnyRow:
    subject = _subject(token, settings)
    # On the primary even with read replicas: a session ended there (logout, a password
    # change, a disabled account) is refused at once, and a login of a moment ago accepted,
    # however far a replica lags. One indexed lookup; the GET's own reads go to a replica.
    async with database.read_engine.primary.connect() as connection:
        user = _current(await users_service.find_caller(connection, subject))
    now = utcnow()
    if sessions_service.is_stale(user.session_last_used_at, now):
        # A read writes nothing but this, once a minute per session, in a short transaction
        # after its read connection is back in the pool.
        async with database.engine.begin() as connection:
            await sessions_service.touch(connection, subject.session_id, now)
    return user


async def get_viewer(
    token: Annotated[str, Depends(_required_token)], database: DatabaseDep, settings: SettingsDep
) -> AnyRow:
    return await _viewer(token, database, settings)


async def get_optional_viewer(
    token: Annotated[str | None, Depends(_optional_token)], database: DatabaseDep, settings: SettingsDep
) -> AnyRow | None:
    """The caller if they sent a token (which must then be valid), else None."""
    return None if token is None else await _viewer(token, database, settings)


CurrentUser = Annotated[AnyRow, Depends(get_current_user)]
Viewer = Annotated[AnyRow, Depends(get_viewer)]
OptionalViewer = Annotated[AnyRow | None, Depends(get_optional_viewer)]
