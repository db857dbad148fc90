from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from blogapi.auth.dependencies import CurrentUser
from blogapi.db import MAX_ID, SessionDep
from blogapi.errors import error_responses
from blogapi.pagination import Page, PageDep
from blogapi.posts import service
from blogapi.posts.models import TITLE_MAX
from blogapi.posts.schemas import PostCreate, PostRead, PostUpdate, TagName, TagRead

router = APIRouter(tags=["posts"])

PostId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.post("/posts", status_code=status.HTTP_201_CREATED, responses=error_responses(401, 413, 422))
async def create_post(data: PostCreate, session: SessionDep, me: CurrentUser, response: Response) -> PostRead:
    post = await service.create_post(session, me, data)
    response.headers["Location"] = f"/api/v1/posts/{post.id}"
    return post


@router.get("/posts", responses=error_responses(422))
async def list_posts(
    session: SessionDep,
    page: PageDep,
    author_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    tag: Annotated[TagName | None, Query()] = None,
    q: Annotated[
        str | None, Query(max_length=TITLE_MAX, description="Case-insensitive title filter.")
    ] = None,
) -> Page[PostRead]:
    return await service.list_posts(session, page, author_id=author_id, tag=tag, title_contains=q)


@router.get("/posts/{post_id}", responses=error_responses(404, 422))
async def read_post(post_id: PostId, session: SessionDep) -> PostRead:
    return await service.get_post(session, post_id)


@router.patch("/posts/{post_id}", responses=error_responses(401, 403, 404, 413, 422))
async def update_post(post_id: PostId, data: PostUpdate, session: SessionDep, me: CurrentUser) -> PostRead:
    return await service.update_post(session, post_id, data, me)


@router.delete(
    "/posts/{post_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 403, 404, 422)
)
async def delete_post(post_id: PostId, session: SessionDep, me: CurrentUser) -> None:
    await service.delete_post(session, post_id, me)


@router.get("/tags", responses=error_responses(422))
async def list_tags(session: SessionDep, page: PageDep) -> Page[TagRead]:
    return await service.list_tags(session, page)
