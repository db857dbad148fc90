from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from blogapi.auth import service
from blogapi.auth.dependencies import client_address
from blogapi.auth.security import TokenSubject, create_access_token
from blogapi.config import SettingsDep
from blogapi.db import DatabaseDep
from blogapi.errors import ProblemType, error_responses
from blogapi.validation import WITHOUT_NUL, WithoutNulInWords

router = APIRouter(prefix="/auth", tags=["auth"])


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105  (the scheme, not a secret)
    expires_in: int


class LoginForm(BaseModel):
    """The OAuth2 password grant (RFC 6749 4.3.2), as Swagger UI and OAuth2 clients send it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"grant_type": "password", "username": "ada@example.com", "password": "correct horse"}
            ]
        }
    )

    # Not empty (a form field sent empty counts as missing) and without NUL (no account's
    # email or password holds one): the document says so, and generated logins are real ones.
    username: Annotated[str, StringConstraints(min_length=1, pattern=WITHOUT_NUL), WithoutNulInWords] = Field(
        description="The account's email address (OAuth2 calls it `username`)."
    )
    password: Annotated[str, StringConstraints(min_length=1, pattern=WITHOUT_NUL), WithoutNulInWords] = Field(
        description="The account's password.", json_schema_extra={"format": "password"}
    )
    # Optional but never null: a form has no null, so the document offers none.
    grant_type: Literal["password"] | SkipJsonSchema[None] = Field(
        default=None, description="`password` if sent."
    )
    scope: str = Field(default="", description="Ignored: a token carries no scopes.")
    client_id: str | None = Field(default=None, description="Ignored.")
    client_secret: str | None = Field(default=None, description="Ignored.")


@router.post(
    "/token",
    responses=error_responses(ProblemType.INVALID_CREDENTIALS, 413, 422, 429),
    summary="Log in",
)
async def issue_token(
    form: Annotated[LoginForm, Form()],
    request: Request,
    response: Response,
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
    # A token is a credential: no cache may keep it (RFC 6749 5.1).
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return Token(access_token=token, expires_in=int(lifetime.total_seconds()))
