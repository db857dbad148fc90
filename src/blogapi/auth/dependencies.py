from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncConnection

from blogapi.auth.security import TokenSubject, read_access_token
from blogapi.config import Settings, SettingsDep
from blogapi.db import AnyRow, Database, DatabaseDep, SessionDep
from blogapi.errors import Unauthorized
from blogapi.users import service as users_service

TOKEN_URL = "/api/v1/auth/token"  # noqa: S105  (a URL, not a secret)

_required_token = OAuth2PasswordBearer(tokenUrl=TOKEN_URL)
_optional_token = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


INVALID_TOKEN = users_service.CALLER_GONE


def client_address(request: Request) -> str:
    """The address the client connected from (the proxy's, behind one that uvicorn does not trust)."""
    return request.client.host if request.client else "unknown"


def _subject(token: str, settings: Settings) -> TokenSubject:
    subject = read_access_token(token, secret=settings.secret_key.get_secret_value())
    if subject is None:
        raise Unauthorized(INVALID_TOKEN)
    return subject


def _current(subject: TokenSubject, user: AnyRow | None) -> AnyRow:
    """The token's user, if the token is valid and was issued since their last password change."""
    if user is None or user.token_version != subject.token_version:
        raise Unauthorized(INVALID_TOKEN)
    return user


async def get_caller(token: Annotated[str, Depends(_required_token)], settings: SettingsDep) -> TokenSubject:
    """The subject of a valid token: not yet looked up, so not yet known to be current."""
    return _subject(token, settings)


Caller = Annotated[TokenSubject, Depends(get_caller)]


async def current_user(connection: AsyncConnection, caller: TokenSubject) -> AnyRow:
    return _current(caller, await users_service.find_user(connection, caller.user_id))


# The caller is a row of the user's columns. A writing request reads it in its own
# transaction (a second connection would hold a second pooled connection); a reading
# request on a connection of its own, closed before the endpoint opens one.


async def get_current_user(caller: Caller, session: SessionDep) -> AnyRow:
    return await current_user(await session.connection(), caller)


async def _viewer(token: str, database: Database, settings: Settings) -> AnyRow:
    subject = _subject(token, settings)
    async with database.read_engine.connect() as connection:
        return _current(subject, await users_service.find_user(connection, subject.user_id))


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
