from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from blogapi.auth import service
from blogapi.auth.dependencies import client_address
from blogapi.auth.security import TokenSubject, create_access_token
from blogapi.config import SettingsDep
from blogapi.db import DatabaseDep
from blogapi.errors import error_responses

router = APIRouter(prefix="/auth", tags=["auth"])


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105  (the scheme, not a secret)
    expires_in: int


@router.post("/token", responses=error_responses(401, 413, 422, 429), summary="Log in")
async def issue_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
) -> Token:
    """OAuth2 password flow: `username` is the account's email.

    Attempts are counted before the password is checked, and refused with 429 and
    `Retry-After` past a limit (per window of `LOGIN_FAILURE_WINDOW_SECONDS`): from one
    client address for one account (`LOGIN_FAILURES_PER_ACCOUNT_AND_ADDRESS`), or for any
    account (`LOGIN_FAILURES_PER_ADDRESS`). Past `LOGIN_FAILURES_PER_ACCOUNT` failures from
    all addresses together, the account is slowed down to one attempt per
    `LOGIN_SLOWDOWN_SECONDS`, not locked: its owner still gets in from elsewhere.
    """
    user = await service.log_in(database, form.username, form.password, client_address(request), settings)
    lifetime = timedelta(minutes=settings.access_token_minutes)
    token = create_access_token(
        TokenSubject(user.id, user.token_version),
        secret=settings.secret_key.get_secret_value(),
        lifetime=lifetime,
    )
    return Token(access_token=token, expires_in=int(lifetime.total_seconds()))
