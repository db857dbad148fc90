from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Path, Query, Request, Response, status
from starlette.convertors import Convertor, register_url_convertor

from blogapi import idempotency
from blogapi.auth import accounts
from blogapi.auth.dependencies import (
    Caller,
    CurrentUser,
    OptionalViewer,
    Viewer,
    client_address,
    current_user,
)
from blogapi.config import SettingsDep
from blogapi.db import MAX_ID, DatabaseDep, SessionDep
from blogapi.errors import ProblemType, error_responses
from blogapi.mail import Mail, MailerDep
from blogapi.pagination import Page, PageDep, SearchPage
from blogapi.posts import service as posts_service
from blogapi.posts.schemas import PostRead
from blogapi.preconditions import (
    ETAG_HEADER,
    NOT_MODIFIED,
    IfMatchHeader,
    IfNoneMatchHeader,
    etag,
    not_modified,
    not_modified_response,
)
from blogapi.users import service
from blogapi.users.models import NAME_MAX
from blogapi.users.schemas import UserCreate, UserRead, UserUpdate
from blogapi.validation import SINGLE_LINE, SingleLineInWords


class _UserIdConvertor(Convertor[str]):
    """Any path segment but `me`: PATCH /users/me is then 405 (Allow: GET), not a 422 for the id "me".

    The value stays a string for FastAPI to validate as `UserId` (a non-number is still 422).
    """

    regex = "(?!me(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return str(value)


register_url_convertor("user_id", _UserIdConvertor())

router = APIRouter(prefix="/users", tags=["users"])

UserId = Annotated[int, Path(ge=1, le=MAX_ID)]

# What a user read shows depends on who asks (the email): caches keep one copy per caller.
VARY = "Authorization"
NameQuery = Annotated[
    str | None,
    Query(
        max_length=NAME_MAX,
        pattern=SINGLE_LINE,
        description=(
            "Users whose name contains this text: case-insensitive in any script, accent-sensitive."
            " A term with more matches than the server's cap, or without three letters or digits"
            " in a row, is searched in bounded walks (see `search_capped`)."
        ),
    ),
    SingleLineInWords,
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserRead,
    responses={
        201: {"headers": idempotency.CREATED_HEADERS},
        **error_responses(
            ProblemType.EMAIL_TAKEN,
            ProblemType.IDEMPOTENCY_KEY_IN_USE,
            413,
            422,
            ProblemType.IDEMPOTENCY_KEY_REUSED,
            429,
        ),
    },
    summary="Sign up",
)
async def create_user(
    data: UserCreate,
    session: SessionDep,
    database: DatabaseDep,
    settings: SettingsDep,
    request: Request,
    background: BackgroundTasks,
    mailer: MailerDep,
    idempotency_key: idempotency.IdempotencyKeyHeader = None,
) -> Response:
    """Create an account. At most `SIGNUPS_PER_ADDRESS` per `SIGNUP_WINDOW_SECONDS` from one
    client address (then 429 with `Retry-After`), counted before the password is hashed.

    The email is mailed a verification token (`POST /auth/verify`); until it is used the
    account's `email_verified` is false (and with `REQUIRE_VERIFIED_EMAIL` it cannot publish).
    A replayed request (same `Idempotency-Key`) sends no second mail."""
    await service.admit_signup(database, client_address(request), settings)
    # Hashed first: the connection opens the transaction. A replay then costs a hash it did not
    # need, which is cheaper than every keyed sign-up holding a connection while hashing.
    password_hash = await service.password_hash_for(data, settings)
    connection = await session.connection()
    claim = await idempotency.begin(
        connection,
        settings,
        owner=idempotency.owner_of(None),
        key=idempotency_key,
        route="users",
        body=data,
    )
    if claim.replay is not None:
        return claim.replay
    user = await service.insert_user(session, data, password_hash)
    mail = await accounts.start_verification(connection, user.id, user.email, settings)
    # Sent after the response, so after the commit: the mail never names an unstored token.
    background.add_task(mailer.deliver, [mail])
    return await idempotency.complete(
        connection,
        claim,
        service.to_read(user, viewer=user),
        f"/api/v1/users/{user.id}",
        etag(user.version),
    )


@router.get("/me", responses={200: {"headers": ETAG_HEADER}, **error_responses(401)})
async def read_me(me: Viewer, response: Response) -> UserRead:
    response.headers["ETag"] = etag(me.version)
    response.headers["Vary"] = VARY
    return service.to_read(me, viewer=me)


@router.get("", responses=error_responses(401, 422, ProblemType.INVALID_CURSOR))
async def list_users(
    database: DatabaseDep,
    settings: SettingsDep,
    viewer: OptionalViewer,
    page: PageDep,
    response: Response,
    q: NameQuery = None,
) -> SearchPage[UserRead]:
    response.headers["Vary"] = VARY
    async with database.read_engine.connect() as connection:
        return await service.list_users(connection, page, viewer, q, max_matches=settings.search_max_matches)


@router.get(
    "/{user_id:user_id}",
    response_model=UserRead,
    responses={200: {"headers": ETAG_HEADER}, **NOT_MODIFIED, **error_responses(401, 404, 422)},
)
async def read_user(
    user_id: UserId,
    database: DatabaseDep,
    viewer: OptionalViewer,
    response: Response,
    if_none_match: IfNoneMatchHeader = None,
) -> UserRead | Response:
    async with database.read_engine.connect() as connection:
        user = await service.read_user(connection, user_id)
    tag = service.user_etag(user, viewer)
    if not_modified(if_none_match, tag):
        return not_modified_response(tag, {"Vary": VARY})
    response.headers["ETag"] = tag
    response.headers["Vary"] = VARY
    return service.to_read(user, viewer)


@router.patch(
    "/{user_id:user_id}",
    responses={
        200: {"headers": ETAG_HEADER},
        **error_responses(
            401,
            403,
            ProblemType.REAUTHENTICATION_REQUIRED,
            404,
            409,
            ProblemType.EMAIL_TAKEN,
            412,
            413,
            422,
            429,
        ),
    },
)
async def update_user(
    user_id: UserId,
    data: UserUpdate,
    caller: Caller,
    session: SessionDep,
    database: DatabaseDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    background: BackgroundTasks,
    mailer: MailerDep,
    if_match: IfMatchHeader = None,
) -> UserRead:
    """Change a user (themself, or any as an admin). A new password ends every other session of
    the user: all but the caller's own when they change their own, all of them when an admin does.

    Changing one's own `password` or `email` needs proof of a recent login: a token from a
    login in the last `RECENT_LOGIN_MINUTES`, or `current_password` (403 without either; a
    wrong one counts as a failed login, 429 past the limits). Admins changing another
    user need neither.

    A new `email` is mailed a verification token and the old one a notice. With
    `REQUIRE_VERIFIED_EMAIL` the change takes effect only when the token is used (`POST
    /auth/verify`): until then the response shows the current address. Without it, the
    new address is the account's at once, with `email_verified` false.
    """
    password_hash = await service.prepare_update(
        database, caller, user_id, data, client_address(request), settings
    )
    # The session takes its connection only now, after the hashing.
    me = await current_user(await session.connection(), caller)
    outbox: list[Mail] = []
    user = await service.update_user(
        session,
        user_id,
        data,
        me,
        password_hash,
        if_match,
        actor_session=caller.session_id,
        settings=settings,
        outbox=outbox,
    )
    background.add_task(mailer.deliver, outbox)
    response.headers["ETag"] = etag(user.version)
    return service.to_read(user, viewer=me)


@router.delete(
    "/{user_id:user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 404, 412, 422),
)
async def delete_user(
    user_id: UserId, session: SessionDep, me: CurrentUser, if_match: IfMatchHeader = None
) -> None:
    """Delete a user and, with them, all their posts."""
    await service.delete_user(session, user_id, me, if_match, release_posts=posts_service.release_author_tags)


@router.get("/{user_id:user_id}/posts", responses=error_responses(404, 422, ProblemType.INVALID_CURSOR))
async def list_user_posts(user_id: UserId, database: DatabaseDep, page: PageDep) -> Page[PostRead]:
    async with database.read_engine.connect() as connection:
        return await posts_service.list_user_posts(connection, user_id, page)
