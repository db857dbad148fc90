from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from blogapi.auth import service
from blogapi.auth.dependencies import Caller, CurrentUser, client_address
from blogapi.auth.security import create_access_token
from blogapi.auth.sessions import service as sessions_service
from blogapi.auth.sessions.schemas import RefreshRequest
from blogapi.config import Settings, SettingsDep
from blogapi.db import DatabaseDep, SessionDep, utcnow
from blogapi.errors import ProblemType, error_responses
from blogapi.validation import WITHOUT_NUL, WithoutNulInWords

router = APIRouter(prefix="/auth", tags=["auth"])


class Token(BaseModel):
    access_token: str = Field(description="A JWT for `Authorization: Bearer`, bound to the login's session.")
    token_type: str = "bearer"  # noqa: S105  (the scheme, not a secret)
    expires_in: int = Field(description="Seconds the access token is valid for (`ACCESS_TOKEN_MINUTES`).")
    refresh_token: str = Field(
        description="Trade it at `POST /auth/refresh` for new tokens, once: each refresh returns the next."
    )


def _tokens(issued: sessions_service.Issued, settings: Settings, response: Response) -> Token:
    lifetime = issued.access_lifetime(settings, utcnow())
    token = create_access_token(
        issued.subject, secret=settings.secret_key.get_secret_value(), lifetime=lifetime
    )
    # A token is a credential: no cache may keep it (RFC 6749 5.1).
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return Token(
        access_token=token, expires_in=int(lifetime.total_seconds()), refresh_token=issued.refresh_token
    )


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
    responses=error_responses(ProblemType.INVALID_CREDENTIALS, ProblemType.ACCOUNT_DISABLED, 413, 422, 429),
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

    A login starts a session (`GET /users/me/sessions` lists them), which lasts
    `SESSION_DAYS`. It returns an access token for `ACCESS_TOKEN_MINUTES` and a refresh
    token for the next ones.
    """
    address = client_address(request)
    user = await service.log_in(database, form.username, form.password, address, settings)
    async with database.engine.begin() as connection:
        issued = await sessions_service.start(
            connection, user.id, address, request.headers.get("user-agent", ""), settings
        )
    return _tokens(issued, settings, response)


@router.post(
    "/refresh",
    responses=error_responses(ProblemType.INVALID_REFRESH_TOKEN, ProblemType.REFRESH_TOKEN_REUSED, 413, 422),
    summary="Refresh the tokens",
)
async def refresh_token(
    data: RefreshRequest, response: Response, database: DatabaseDep, settings: SettingsDep
) -> Token:
    """Trade a refresh token for a new access token and a new refresh token (rotation).

    Each refresh token works once. Presenting one that was already traded ends its whole
    session (401 `refresh-token-reused`), since a copy of it was stolen or the thief used it
    first: whoever holds the newer tokens is locked out too, and the owner logs in again.
    Two refreshes at once with one token are the same case, so a client must send one at a
    time. A refreshed access token proves the session's login, not a new one (`auth_time`).
    """
    issued = await sessions_service.refresh(database, data.refresh_token, settings)
    return _tokens(issued, settings, response)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401),
    summary="Log out",
)
async def log_out(caller: Caller, session: SessionDep, _me: CurrentUser) -> None:
    """End the session of this access token: it and the session's refresh token are refused
    from now on, by every process."""
    await sessions_service.revoke(await session.connection(), caller.session_id)
