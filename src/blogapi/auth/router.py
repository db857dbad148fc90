from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, BackgroundTasks, Form, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from blogapi.auth import accounts, service
from blogapi.auth.dependencies import Caller, CurrentUser, client_address, current_user
from blogapi.auth.schemas import Accepted, PasswordResetConfirm, PasswordResetRequest, VerifyRequest
from blogapi.auth.security import create_access_token
from blogapi.auth.sessions import service as sessions_service
from blogapi.auth.sessions.schemas import RefreshRequest
from blogapi.config import Settings, SettingsDep
from blogapi.db import DatabaseDep, SessionDep, utcnow
from blogapi.errors import ProblemType, error_responses
from blogapi.mail import MailerDep
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


@router.post(
    "/password-reset",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(413, 422, 429),
    summary="Ask for a password reset mail",
)
async def request_password_reset(
    data: PasswordResetRequest,
    request: Request,
    background: BackgroundTasks,
    database: DatabaseDep,
    settings: SettingsDep,
    mailer: MailerDep,
) -> Accepted:
    """Mail a token that sets a new password (`POST /auth/password-reset/confirm`), once, within
    `PASSWORD_RESET_MINUTES` (30) minutes, if an active account has this email.

    Always 202 with the same body, and the same work before the answer, whether or not an
    account has the email: the account is looked up, and the mail sent, after the response.
    At most `PASSWORD_RESETS_PER_ADDRESS` requests per `PASSWORD_RESET_WINDOW_SECONDS` from one
    client address (then 429 with `Retry-After`); past `PASSWORD_RESETS_PER_ACCOUNT` for one
    email, requests are answered alike but no mail is sent.
    """
    if await accounts.request_reset(database, data.email, client_address(request), settings):
        background.add_task(accounts.send_reset, database, mailer, data.email, settings)
    return Accepted(detail=accounts.RESET_ACCEPTED)


@router.post(
    "/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(ProblemType.INVALID_RESET_TOKEN, 413, 422),
    summary="Set a new password with a reset token",
)
async def confirm_password_reset(
    data: PasswordResetConfirm, database: DatabaseDep, settings: SettingsDep
) -> None:
    """Set the password of the token's account and end every session of it (log in again).

    The token works once (of two confirms at once, one succeeds) and proves the account's
    email too (`email_verified`). 400 `invalid-reset-token` if it is unknown, used or
    expired, or the account's email changed since it was sent.
    """
    password_hash = await accounts.reset_password_hash(database, data.token, data.new_password, settings)
    async with database.engine.begin() as connection:
        await accounts.confirm_reset(connection, data.token, password_hash)


@router.post(
    "/verify",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(ProblemType.INVALID_VERIFICATION_TOKEN, ProblemType.EMAIL_TAKEN, 413, 422),
    summary="Verify an email address",
)
async def verify_email(data: VerifyRequest, database: DatabaseDep) -> None:
    """Mark the address the token was mailed to as verified (`email_verified`).

    For an email change under `REQUIRE_VERIFIED_EMAIL`, the new address becomes the account's
    now (409 `email-taken` if another account took it meanwhile). 400
    `invalid-verification-token` if the token is unknown, used, expired, or names an address
    the account no longer has.
    """
    async with database.engine.begin() as connection:
        await accounts.verify_email(connection, data.token)


@router.post(
    "/verify/resend",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(401, 429),
    summary="Mail a new verification token",
)
async def resend_verification(
    caller: Caller,
    background: BackgroundTasks,
    database: DatabaseDep,
    settings: SettingsDep,
    mailer: MailerDep,
) -> Accepted:
    """Mail a new verification token to the caller's address, unless it is verified already;
    earlier tokens stop working. At most `PASSWORD_RESETS_PER_ACCOUNT` per
    `PASSWORD_RESET_WINDOW_SECONDS` (then 429)."""
    async with database.engine.begin() as connection:
        me = await current_user(connection, caller)
        mails = await accounts.resend_verification(connection, me, settings)
    background.add_task(mailer.deliver, mails)
    return Accepted(detail="unless your address is verified already, a verification mail is on its way")
