from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from blogapi.auth import service
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
    response: Response,
    database: DatabaseDep,
    settings: SettingsDep,
) -> Token:
    """OAuth2 password flow: `username` is the account's email.

    Repeated failures for one account, or from one client address, are refused with 429
    for the rest of a window (`LOGIN_FAILURES_PER_ACCOUNT`, `..._PER_ADDRESS`,
    `LOGIN_FAILURE_WINDOW_SECONDS`).
    """
    address = request.client.host if request.client else "unknown"
    user = await service.log_in(database, form.username, form.password, address, settings)
    lifetime = timedelta(minutes=settings.access_token_minutes)
    token = create_access_token(
        TokenSubject(user.id, user.token_version),
        secret=settings.secret_key.get_secret_value(),
        lifetime=lifetime,
    )
    # A token is a credential: no cache may keep it (RFC 6749 5.1).
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return Token(access_token=token, expires_in=int(lifetime.total_seconds()))
