"""The admin console's pages: HTML forms over the same services as the API.

Reads call the services' Core reads on a read connection, as GET endpoints do; every write
runs the API's service function in one transaction (`database.sessionmaker.begin()`), with
the page's ETag as If-Match: the version bump, tag normalisation, cascades, password
hashing and session ending are the services' own. A domain error is shown as a page with
its status, never a 500.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.responses import RedirectResponse, Response

from blogapi.admin import security
from blogapi.auth import service as auth_service
from blogapi.auth.dependencies import client_address, current_user
from blogapi.auth.security import TokenSubject
from blogapi.auth.sessions import service as sessions_service
from blogapi.config import Settings, SettingsDep
from blogapi.db import MAX_ID, AnyRow, Database, DatabaseDep, utcnow
from blogapi.errors import DomainError, Forbidden
from blogapi.mail import Mail, Mailer
from blogapi.pagination import PageParams
from blogapi.posts import service as posts_service
from blogapi.posts.schemas import PostUpdate
from blogapi.preconditions import etag
from blogapi.users import service as users_service
from blogapi.users.models import NAME_MAX
from blogapi.users.schemas import UserUpdate
from blogapi.validation import SINGLE_LINE

PAGE_SIZE = 50
NOT_AN_ADMIN = "this account is not an admin"
FORM_REFUSED = (
    "the form was refused: it did not come from this console (a cross-site request, or an"
    " expired form); reload the page and try again"
)
# A tag list as typed: names separated by commas or spaces (a tag holds neither).
_TAG_SEPARATORS = re.compile(r"[\s,]+")

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(prefix=security.PREFIX, include_in_schema=False)

UserId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
PostId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
# One line of text, as the API's `q`: no NUL nor control characters for a database to refuse.
SearchQuery = Annotated[str, Query(max_length=NAME_MAX, pattern=SINGLE_LINE)]
CursorQuery = Annotated[str | None, Query(max_length=1000)]


class AdminRefused(Exception):
    """The request is not an admin's, or its form is not the console's: `response` says so."""

    def __init__(self, response: Response) -> None:
        super().__init__("admin console request refused")
        self.response = response


async def admin_refused(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AdminRefused)
    return exc.response


@dataclass(frozen=True, slots=True)
class Admin:
    subject: TokenSubject
    user: AnyRow


def _secret(settings: Settings) -> str:
    return settings.secret_key.get_secret_value()


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    settings: Settings = request.app.state.settings
    cookie, new = security.csrf_cookie(request)
    context = context | {"csrf_token": security.csrf_token(cookie, _secret(settings))}
    response = templates.TemplateResponse(request, name, context, status_code=status, headers=headers)
    if new:
        security.set_csrf_cookie(request, response, cookie)
    return security.secure_headers(response)


def _error_page(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    return render(
        request, "error.html", {"status": status, "message": message}, status=status, headers=headers
    )


def _domain_error_page(request: Request, exc: DomainError) -> Response:
    # Bearer challenges are the API's; a page has no use for them.
    headers = {name: value for name, value in exc.headers.items() if name != "WWW-Authenticate"}
    return _error_page(request, exc.status, exc.detail, headers)


def _redirect(url: str) -> Response:
    return security.secure_headers(RedirectResponse(url, status_code=303))


def _login_redirect() -> Response:
    return _redirect(f"{security.PREFIX}/login")


async def _admin(request: Request, database: Database, settings: Settings) -> Admin | None:
    """The admin whose console session the request's cookie names, if it is open; else None.

    Raises AdminRefused (403) for a user who is no longer an admin.
    """
    subject = security.session_subject(request, _secret(settings))
    if subject is None:
        return None
    async with database.read_engine.connect() as connection:
        user = await users_service.find_caller(connection, subject)
    if user is None:  # logged out, disabled, deleted, or the session revoked
        return None
    if not user.is_admin:
        raise AdminRefused(_error_page(request, 403, NOT_AN_ADMIN))
    return Admin(subject, user)


async def require_admin(request: Request, database: DatabaseDep, settings: SettingsDep) -> Admin:
    """For a page: the admin, or a redirect to the login form."""
    admin = await _admin(request, database, settings)
    if admin is None:
        raise AdminRefused(_login_redirect())
    return admin


async def read_form(request: Request, settings: Settings) -> dict[str, str]:
    """The form's text fields, if it carries this browser's CSRF token; else AdminRefused (403)."""
    form = await request.form()
    if not security.csrf_valid(request, form.get(security.CSRF_FIELD), _secret(settings)):
        raise AdminRefused(_error_page(request, 403, FORM_REFUSED))
    return {key: value for key, value in form.items() if isinstance(value, str)}


@dataclass(frozen=True, slots=True)
class AdminForm:
    admin: Admin
    fields: dict[str, str]


async def require_admin_form(request: Request, database: DatabaseDep, settings: SettingsDep) -> AdminForm:
    """For a write: a form with a valid CSRF token, sent by a logged-in admin (else 403 / 401)."""
    fields = await read_form(request, settings)
    admin = await _admin(request, database, settings)
    if admin is None:
        raise AdminRefused(_error_page(request, 401, "log in to the admin console first"))
    return AdminForm(admin, fields)


AdminDep = Annotated[Admin, Depends(require_admin)]
AdminFormDep = Annotated[AdminForm, Depends(require_admin_form)]


def _validation_page(request: Request, exc: ValidationError) -> Response:
    problems = [
        f"{'.'.join(str(part) for part in error['loc']) or 'value'}: {error['msg']}" for error in exc.errors()
    ]
    return render(request, "error.html", {"status": 422, "problems": problems}, status=422)


async def _acting_admin(session_connection: Any, admin: Admin) -> AnyRow:
    """The admin's row in the write's own transaction (their session open, still an admin)."""
    me = await current_user(session_connection, admin.subject)
    if not me.is_admin:
        raise Forbidden(NOT_AN_ADMIN)
    return me


# ---- logging in and out ----


@router.get("")
async def home() -> Response:
    return _redirect(f"{security.PREFIX}/users")


@router.get("/login")
async def login_form(request: Request) -> Response:
    return render(request, "login.html", {})


@router.post("/login")
async def log_in(request: Request, database: DatabaseDep, settings: SettingsDep) -> Response:
    """The API's login (same verification and throttling); then only an admin gets a console session."""
    fields = await read_form(request, settings)
    email = fields.get("email", "")
    address = client_address(request)
    try:
        user = await auth_service.log_in(database, email, fields.get("password", ""), address, settings)
    except DomainError as exc:
        headers = {name: value for name, value in exc.headers.items() if name != "WWW-Authenticate"}
        context = {"error": exc.detail, "email": email}
        return render(request, "login.html", context, status=exc.status, headers=headers)
    if not user.is_admin:
        return render(request, "login.html", {"error": NOT_AN_ADMIN, "email": email}, status=403)
    async with database.engine.begin() as connection:
        issued = await sessions_service.start(
            connection, user.id, address, request.headers.get("user-agent", ""), settings
        )
    response = _redirect(f"{security.PREFIX}/users")
    lifetime = issued.expires_at - utcnow()
    security.start_session(request, response, issued.subject, _secret(settings), lifetime)
    return response


@router.post("/logout")
async def log_out(request: Request, database: DatabaseDep, settings: SettingsDep) -> Response:
    await read_form(request, settings)
    subject = security.session_subject(request, _secret(settings))
    if subject is not None:
        async with database.engine.begin() as connection:
            await sessions_service.revoke(connection, subject.session_id)
    response = _login_redirect()
    security.end_session(request, response)
    return response


# ---- users ----


@router.get("/users")
async def users_page(
    request: Request,
    admin: AdminDep,
    database: DatabaseDep,
    settings: SettingsDep,
    q: SearchQuery = "",
    cursor: CursorQuery = None,
) -> Response:
    """Users by name, or the one with an email (a search term with an @)."""
    q = q.strip()
    try:
        if "@" in q:
            async with database.read_sessionmaker() as session:
                user_id = await users_service.user_id_of(session, q)
            async with database.read_engine.connect() as connection:
                users = [
                    users_service.to_read(await users_service.read_user(connection, user_id), admin.user)
                ]
            next_cursor = None
        else:
            params = PageParams(PAGE_SIZE, cursor, request.app.state.cursor_codec)
            async with database.read_engine.connect() as connection:
                page = await users_service.list_users(
                    connection, params, admin.user, q or None, max_matches=settings.search_max_matches
                )
            users, next_cursor = page.items, page.next_cursor
    except DomainError as exc:
        if exc.status != 404:
            return _domain_error_page(request, exc)
        users, next_cursor = [], None
    context = {"admin": admin.user, "users": users, "q": q, "next_cursor": next_cursor}
    return render(request, "users.html", context)


@router.get("/users/{user_id}")
async def user_page(request: Request, user_id: UserId, admin: AdminDep, database: DatabaseDep) -> Response:
    try:
        async with database.read_engine.connect() as connection:
            user = await users_service.read_user(connection, user_id)
    except DomainError as exc:
        return _domain_error_page(request, exc)
    context = {
        "admin": admin.user,
        "user": user,
        "etag": etag(user.version),
        "done": request.query_params.get("done"),
    }
    return render(request, "user.html", context)


async def _update_user(
    request: Request,
    database: Database,
    settings: Settings,
    admin: Admin,
    user_id: int,
    changes: dict[str, Any],
    if_match: str | None,
) -> Response:
    try:
        data = UserUpdate.model_validate(changes)
    except ValidationError as exc:
        return _validation_page(request, exc)
    try:
        # Hashed before the transaction takes a connection, as the API does.
        password_hash = await users_service.prepare_update(
            database, admin.subject, user_id, data, client_address(request), settings
        )
        outbox: list[Mail] = []
        async with database.sessionmaker.begin() as session:
            me = await _acting_admin(await session.connection(), admin)
            await users_service.update_user(
                session,
                user_id,
                data,
                me,
                password_hash,
                if_match,
                actor_session=admin.subject.session_id,
                settings=settings,
                outbox=outbox,
            )
    except DomainError as exc:
        return _domain_error_page(request, exc)
    response = _redirect(f"{security.PREFIX}/users/{user_id}?done=saved")
    # An email change's mails (mail.py), after the response as the API sends them.
    response.background = BackgroundTask(Mailer(settings).deliver, outbox)
    return response


@router.post("/users/{user_id}")
async def edit_user(
    request: Request, user_id: UserId, form: AdminFormDep, database: DatabaseDep, settings: SettingsDep
) -> Response:
    """Name, email, a new password, enabled or not: only what differs from the user as shown."""
    fields = form.fields
    try:
        async with database.read_engine.connect() as connection:
            user = await users_service.read_user(connection, user_id)
    except DomainError as exc:
        return _domain_error_page(request, exc)
    changes: dict[str, Any] = {}
    for name in ("name", "email"):
        if name in fields and fields[name] != getattr(user, name):
            changes[name] = fields[name]
    if fields.get("password"):
        changes["password"] = fields["password"]
    if fields.get("current_password"):  # one's own email or password, past a recent login
        changes["current_password"] = fields["current_password"]
    is_active = fields.get("is_active") == "on"
    if is_active != user.is_active:
        changes["is_active"] = is_active
    if_match = fields.get("etag")
    return await _update_user(request, database, settings, form.admin, user_id, changes, if_match)


@router.post("/users/{user_id}/admin")
async def set_user_admin(
    request: Request, user_id: UserId, form: AdminFormDep, database: DatabaseDep, settings: SettingsDep
) -> Response:
    """Promote (`is_admin=true`) or demote (`false`) the user."""
    changes = {"is_admin": form.fields.get("is_admin") == "true"}
    return await _update_user(
        request, database, settings, form.admin, user_id, changes, form.fields.get("etag")
    )


@router.post("/users/{user_id}/delete")
async def delete_user(
    request: Request, user_id: UserId, form: AdminFormDep, database: DatabaseDep
) -> Response:
    try:
        async with database.sessionmaker.begin() as session:
            me = await _acting_admin(await session.connection(), form.admin)
            await users_service.delete_user(
                session,
                user_id,
                me,
                form.fields.get("etag"),
                release_posts=posts_service.release_author_tags,
            )
    except DomainError as exc:
        return _domain_error_page(request, exc)
    return _redirect(f"{security.PREFIX}/users?done=deleted")


# ---- posts and tags ----


@router.get("/posts")
async def posts_page(
    request: Request,
    admin: AdminDep,
    database: DatabaseDep,
    settings: SettingsDep,
    q: SearchQuery = "",
    tag: SearchQuery = "",
    author: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    cursor: CursorQuery = None,
) -> Response:
    q, tag = q.strip(), tag.strip()
    params = PageParams(PAGE_SIZE, cursor, request.app.state.cursor_codec)
    try:
        async with database.read_engine.connect() as connection:
            page = await posts_service.list_posts(
                connection,
                params,
                author_id=author,
                tag=tag or None,
                title_contains=q or None,
                max_matches=settings.search_max_matches,
            )
    except DomainError as exc:
        return _domain_error_page(request, exc)
    context = {
        "admin": admin.user,
        "posts": page.items,
        "q": q,
        "tag": tag,
        "author": author,
        "next_cursor": page.next_cursor,
        "done": request.query_params.get("done"),
    }
    return render(request, "posts.html", context)


@router.get("/posts/{post_id}")
async def post_page(request: Request, post_id: PostId, admin: AdminDep, database: DatabaseDep) -> Response:
    try:
        async with database.read_engine.connect() as connection:
            view = await posts_service.read_post(connection, post_id)
    except DomainError as exc:
        return _domain_error_page(request, exc)
    context = {
        "admin": admin.user,
        "post": view.post,
        "etag": view.etag,
        "done": request.query_params.get("done"),
    }
    return render(request, "post.html", context)


@router.post("/posts/{post_id}")
async def edit_post(request: Request, post_id: PostId, form: AdminFormDep, database: DatabaseDep) -> Response:
    """Title, body and tags, as PATCH /posts/{id} takes them (tags normalised by its schema)."""
    fields = form.fields
    changes: dict[str, Any] = {}
    if "title" in fields:
        changes["title"] = fields["title"]
    if "body" in fields:
        changes["body"] = fields["body"].replace("\r\n", "\n")  # as typed, not as the form encodes it
    if "tags" in fields:
        changes["tags"] = [name for name in _TAG_SEPARATORS.split(fields["tags"]) if name]
    try:
        data = PostUpdate.model_validate(changes)
    except ValidationError as exc:
        return _validation_page(request, exc)
    try:
        async with database.sessionmaker.begin() as session:
            me = await _acting_admin(await session.connection(), form.admin)
            await posts_service.update_post(session, post_id, data, me, fields.get("etag"))
    except DomainError as exc:
        return _domain_error_page(request, exc)
    return _redirect(f"{security.PREFIX}/posts/{post_id}?done=saved")


@router.post("/posts/{post_id}/delete")
async def delete_post(
    request: Request, post_id: PostId, form: AdminFormDep, database: DatabaseDep
) -> Response:
    try:
        async with database.sessionmaker.begin() as session:
            me = await _acting_admin(await session.connection(), form.admin)
            await posts_service.delete_post(session, post_id, me, form.fields.get("etag"))
    except DomainError as exc:
        return _domain_error_page(request, exc)
    return _redirect(f"{security.PREFIX}/posts?done=deleted")


@router.get("/tags")
async def tags_page(
    request: Request, admin: AdminDep, database: DatabaseDep, cursor: CursorQuery = None
) -> Response:
    """Tags, most used first. A tag exists through its posts: it is changed by editing them."""
    params = PageParams(PAGE_SIZE, cursor, request.app.state.cursor_codec)
    try:
        async with database.read_engine.connect() as connection:
            page = await posts_service.list_tags(connection, params)
    except DomainError as exc:
        return _domain_error_page(request, exc)
    context = {"admin": admin.user, "tags": page.items, "next_cursor": page.next_cursor}
    return render(request, "tags.html", context)
