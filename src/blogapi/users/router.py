from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from blogapi.auth.dependencies import CurrentUser, OptionalUser
from blogapi.config import SettingsDep
from blogapi.db import MAX_ID, SessionDep
from blogapi.errors import error_responses
from blogapi.pagination import Page, PageDep
from blogapi.posts import service as posts_service
from blogapi.posts.schemas import PostRead
from blogapi.users import service
from blogapi.users.models import NAME_MAX
from blogapi.users.schemas import UserCreate, UserRead, UserUpdate

router = APIRouter(prefix="/users", tags=["users"])

UserId = Annotated[int, Path(ge=1, le=MAX_ID)]
NameQuery = Annotated[str | None, Query(max_length=NAME_MAX, description="Case-insensitive name filter.")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409, 413, 422),
    summary="Sign up",
)
async def create_user(
    data: UserCreate, session: SessionDep, settings: SettingsDep, response: Response
) -> UserRead:
    user = await service.create_user(session, data, settings)
    response.headers["Location"] = f"/api/v1/users/{user.id}"
    return service.to_read(user, viewer=user)


@router.get("/me", responses=error_responses(401))
async def read_me(me: CurrentUser) -> UserRead:
    return service.to_read(me, viewer=me)


@router.get("", responses=error_responses(401, 422))
async def list_users(
    session: SessionDep, viewer: OptionalUser, page: PageDep, q: NameQuery = None
) -> Page[UserRead]:
    return await service.list_users(session, page, viewer, q)


@router.get("/{user_id}", responses=error_responses(401, 404, 422))
async def read_user(user_id: UserId, session: SessionDep, viewer: OptionalUser) -> UserRead:
    return await service.read_user(session, user_id, viewer)


@router.patch("/{user_id}", responses=error_responses(401, 403, 404, 409, 413, 422))
async def update_user(
    user_id: UserId, data: UserUpdate, session: SessionDep, me: CurrentUser, settings: SettingsDep
) -> UserRead:
    return await service.update_user(session, user_id, data, me, settings)


@router.delete(
    "/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 403, 404, 422)
)
async def delete_user(user_id: UserId, session: SessionDep, me: CurrentUser) -> None:
    await service.delete_user(session, user_id, me)


@router.get("/{user_id}/posts", responses=error_responses(404, 422))
async def list_user_posts(user_id: UserId, session: SessionDep, page: PageDep) -> Page[PostRead]:
    return await posts_service.list_user_posts(session, user_id, page)
