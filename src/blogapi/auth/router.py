from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from blogapi.auth.security import create_access_token
from blogapi.config import SettingsDep
from blogapi.db import SessionDep
from blogapi.errors import error_responses
from blogapi.users import service as users_service

router = APIRouter(prefix="/auth", tags=["auth"])


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105  (the scheme, not a secret)
    expires_in: int


@router.post("/token", responses=error_responses(401, 413, 422), summary="Log in")
async def issue_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep, settings: SettingsDep
) -> Token:
    """OAuth2 password flow: `username` is the account's email."""
    user = await users_service.authenticate(session, form.username, form.password, settings)
    lifetime = timedelta(minutes=settings.access_token_minutes)
    token = create_access_token(user.id, secret=settings.secret_key.get_secret_value(), lifetime=lifetime)
    return Token(access_token=token, expires_in=int(lifetime.total_seconds()))
