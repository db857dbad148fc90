from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from blogapi import idempotency
from blogapi.auth import accounts
from blogapi.auth.dependencies import Caller, CurrentUser, current_user
from blogapi.config import SettingsDep
from blogapi.db import MAX_ID, DatabaseDep, SessionDep
from blogapi.errors import ProblemType, error_responses
from blogapi.pagination import Page, PageDep, SearchPage
from blogapi.posts import service
from blogapi.posts.models import TITLE_MAX
from blogapi.posts.schemas import PostCreate, PostRead, PostUpdate, TagName, TagRead
from blogapi.preconditions import (
    ETAG_HEADER,
    NOT_MODIFIED,
    IfMatchHeader,
    IfNoneMatchHeader,
    not_modified,
    not_modified_response,
)
from blogapi.validation import SINGLE_LINE, SingleLineInWords

router = APIRouter(tags=["posts"])

PostId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.post(
    "/posts",
    status_code=status.HTTP_201_CREATED,
    response_model=PostRead,
    responses={
        201: {"headers": idempotency.CREATED_HEADERS},
        **error_responses(
            401,
            ProblemType.EMAIL_NOT_VERIFIED,
            ProblemType.IDEMPOTENCY_KEY_IN_USE,
            413,
            422,
            ProblemType.IDEMPOTENCY_KEY_REUSED,
        ),
    },
)
async def create_post(
    data: PostCreate,
    caller: Caller,
    database: DatabaseDep,
    settings: SettingsDep,
    idempotency_key: idempotency.IdempotencyKeyHeader = None,
) -> Response:
    """Publish a post as the caller. With `REQUIRE_VERIFIED_EMAIL`, only once the caller's
    email is verified (403 `email-not-verified`)."""
    # The most frequent write runs Core statements in a transaction it opens itself, which
    # commits before the endpoint returns: a session (a yield dependency, a unit of work)
    # would add about a fifth of its CPU for nothing it uses.
    async with database.engine.begin() as connection:
        me = await current_user(connection, caller)
        accounts.ensure_may_publish(me, settings)
        claim = await idempotency.begin(
            connection,
            settings,
            owner=idempotency.owner_of(me.id),
            key=idempotency_key,
            route="posts",
            body=data,
        )
        if claim.replay is not None:
            return claim.replay
        view = await service.create_post(connection, me, data)
        return await idempotency.complete(
            connection, claim, view.post, f"/api/v1/posts/{view.post.id}", view.etag
        )


@router.get("/posts", responses=error_responses(422, ProblemType.INVALID_CURSOR))
async def list_posts(
    database: DatabaseDep,
    settings: SettingsDep,
    page: PageDep,
    author_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    tag: Annotated[TagName | None, Query()] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=TITLE_MAX,
            pattern=SINGLE_LINE,
            description=(
                "Posts whose title contains this text: case-insensitive in any script,"
                " accent-sensitive. A term with more matches than the server's cap, or"
                " without three letters or digits in a row, is searched in bounded walks"
                " (see `search_capped`)."
            ),
        ),
        SingleLineInWords,
    ] = None,
) -> SearchPage[PostRead]:
    async with database.read_engine.connect() as connection:
        return await service.list_posts(
            connection,
            page,
            author_id=author_id,
            tag=tag,
            title_contains=q,
            max_matches=settings.search_max_matches,
        )


@router.get(
    "/posts/{post_id}",
    response_model=PostRead,
    responses={200: {"headers": ETAG_HEADER}, **NOT_MODIFIED, **error_responses(404, 422)},
)
async def read_post(
    post_id: PostId, database: DatabaseDep, response: Response, if_none_match: IfNoneMatchHeader = None
) -> PostRead | Response:
    async with database.read_engine.connect() as connection:
        view = await service.read_post(connection, post_id)
    if not_modified(if_none_match, view.etag):
        return not_modified_response(view.etag)
    response.headers["ETag"] = view.etag
    return view.post


@router.patch(
    "/posts/{post_id}",
    responses={200: {"headers": ETAG_HEADER}, **error_responses(401, 403, 404, 412, 413, 422)},
)
async def update_post(
    post_id: PostId,
    data: PostUpdate,
    session: SessionDep,
    me: CurrentUser,
    response: Response,
    if_match: IfMatchHeader = None,
) -> PostRead:
    """Change a post (its author, or an admin)."""
    post = await service.update_post(session, post_id, data, me, if_match)
    response.headers["ETag"] = service.post_etag(post)
    return service.to_read(post)


@router.delete(
    "/posts/{post_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 404, 412, 422),
)
async def delete_post(
    post_id: PostId, session: SessionDep, me: CurrentUser, if_match: IfMatchHeader = None
) -> None:
    """Delete a post (its author, or an admin)."""
    await service.delete_post(session, post_id, me, if_match)


@router.get("/tags", responses=error_responses(422, ProblemType.INVALID_CURSOR))
async def list_tags(database: DatabaseDep, page: PageDep) -> Page[TagRead]:
    async with database.read_engine.connect() as connection:
        return await service.list_tags(connection, page)
