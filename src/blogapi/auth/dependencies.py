from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import OAuth2PasswordBearer

from blogapi.auth.security import read_access_token
from blogapi.config import SettingsDep
from blogapi.db import SessionDep
from blogapi.errors import Unauthorized
from blogapi.users.models import User

TOKEN_URL = "/api/v1/auth/token"  # noqa: S105  (a URL, not a secret)

_required_token = OAuth2PasswordBearer(tokenUrl=TOKEN_URL)
_optional_token = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


async def _user_for_token(token: str, session: SessionDep, settings: SettingsDep) -> User:
    subject = read_access_token(token, secret=settings.secret_key.get_secret_value())
    # The request's own session: a second one would hold a second pooled connection.
    user = await session.get(User, subject.user_id) if subject is not None else None
    if user is None or subject is None or user.token_version != subject.token_version:
        raise Unauthorized("the access token is missing, invalid or expired")
    return user


async def get_current_user(
    token: Annotated[str, Depends(_required_token)], session: SessionDep, settings: SettingsDep
) -> User:
    return await _user_for_token(token, session, settings)


async def get_optional_user(
    token: Annotated[str | None, Depends(_optional_token)], session: SessionDep, settings: SettingsDep
) -> User | None:
    """The caller if they sent a token (which must then be valid), else None."""
    return None if token is None else await _user_for_token(token, session, settings)


CurrentUser = Annotated[User, Depends(get_current_user)]
OptionalUser = Annotated[User | None, Depends(get_optional_user)]
