from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Depends
from fastapi.security import OAuth2PasswordBearer

from blogapi.auth.security import TokenSubject, read_access_token
from blogapi.config import Settings, SettingsDep
from blogapi.db import AnyRow, ConnectionDep, SessionDep
from blogapi.errors import Unauthorized
from blogapi.users import service as users_service
from blogapi.users.models import User

TOKEN_URL = "/api/v1/auth/token"  # noqa: S105  (a URL, not a secret)

_required_token = OAuth2PasswordBearer(tokenUrl=TOKEN_URL)
_optional_token = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)

A = TypeVar("A", User, AnyRow)


def _subject(token: str, settings: Settings) -> TokenSubject | None:
    return read_access_token(token, secret=settings.secret_key.get_secret_value())


def _current(subject: TokenSubject | None, user: A | None) -> A:
    """The token's user, if the token is valid and was issued since their last password change."""
    if user is None or subject is None or user.token_version != subject.token_version:
        raise Unauthorized("the access token is missing, invalid or expired")
    return user


# Writing requests get the caller as an entity of their session (the request's own: a
# second one would hold a second pooled connection); reading requests as a row, read on
# their connection.


async def get_current_user(
    token: Annotated[str, Depends(_required_token)], session: SessionDep, settings: SettingsDep
) -> User:
    subject = _subject(token, settings)
    return _current(subject, await session.get(User, subject.user_id) if subject else None)


async def _viewer(token: str, connection: ConnectionDep, settings: Settings) -> AnyRow:
    subject = _subject(token, settings)
    return _current(subject, await users_service.find_user(connection, subject.user_id) if subject else None)


async def get_viewer(
    token: Annotated[str, Depends(_required_token)], connection: ConnectionDep, settings: SettingsDep
) -> AnyRow:
    return await _viewer(token, connection, settings)


async def get_optional_viewer(
    token: Annotated[str | None, Depends(_optional_token)], connection: ConnectionDep, settings: SettingsDep
) -> AnyRow | None:
    """The caller if they sent a token (which must then be valid), else None."""
    return None if token is None else await _viewer(token, connection, settings)


CurrentUser = Annotated[User, Depends(get_current_user)]
Viewer = Annotated[AnyRow, Depends(get_viewer)]
OptionalViewer = Annotated[AnyRow | None, Depends(get_optional_viewer)]
