"""The admin console at /admin (ADMIN_ENABLED=true): users, posts and tags in HTML forms.

Hand-written (CONTRIBUTING.md says why): pages over the same services as the API, for
admins logged in with their blogapi account. When it is off nothing of it is mounted, and
/admin is a 404 like any unknown path.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from blogapi.admin import router as pages
from blogapi.admin.security import PREFIX


def install(app: FastAPI) -> None:
    app.include_router(pages.router)
    app.mount(
        f"{PREFIX}/static", StaticFiles(directory=Path(__file__).parent / "static"), name="admin-static"
    )
    app.add_exception_handler(pages.AdminRefused, pages.admin_refused)
