from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from blogapi.auth.dependencies import Caller, CurrentUser, Viewer
from blogapi.auth.sessions import service
from blogapi.auth.sessions.schemas import SessionRead
from blogapi.db import MAX_ID, DatabaseDep, SessionDep
from blogapi.errors import ProblemType, error_responses
from blogapi.pagination import Page, PageDep

router = APIRouter(prefix="/users/me/sessions", tags=["sessions"])

SessionId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.get("", responses=error_responses(401, 422, ProblemType.INVALID_CURSOR))
async def list_my_sessions(
    caller: Caller, _me: Viewer, database: DatabaseDep, page: PageDep
) -> Page[SessionRead]:
    """Your open sessions (logins not yet ended or expired), newest first; `current` marks
    the one whose token made this request."""
    async with database.read_engine.connect() as connection:
        return await service.list_sessions(connection, caller, page)


@router.delete(
    "/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 404, 422),
)
async def end_my_session(
    session_id: SessionId, caller: Caller, session: SessionDep, _me: CurrentUser
) -> None:
    """End one of your sessions (another device's, say): its tokens are refused from now on.
    Only your own open sessions are found; any other id is 404."""
    await service.end_own(await session.connection(), caller.user_id, session_id)
