"""Swagger UI at /docs and ReDoc at /redoc, from assets kept in a package: they work offline.

FastAPI's own pages load their scripts from a CDN and are blank without internet. These are
the same pages (FastAPI renders them) pointed at the copies fastapi-offline ships, under a
Content-Security-Policy that lets them load nothing from another origin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Awaitable, Callable, Mapping

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse, Response

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
ASSETS_PACKAGE = ("fastapi_offline", "static")

# ReDoc writes its styles into <style> elements as it renders, and searches in a worker.
REDOC_SOURCES = {"style-src": "'self' 'unsafe-inline'", "worker-src": "blob:"}

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def install_docs(app: FastAPI) -> None:
    """Serve the docs pages and their assets; `app` was made with docs_url=redoc_url=None.

    Routes, not a Mount: a Mount matches every method, and the 405 handler's Allow header
    asks each route which methods it takes.
    """
    openapi_url = app.openapi_url
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    assert openapi_url, "the docs pages show the OpenAPI document"
    assert oauth2_redirect_url, "Swagger UI's OAuth2 flows need their redirect page"
    assert app.docs_url is None, "FastAPI's own /docs loads Swagger UI from a CDN"
    assert app.redoc_url is None, "FastAPI's own /redoc loads ReDoc from a CDN"
    assets = StaticFiles(packages=[ASSETS_PACKAGE])

    async def asset(request: Request) -> Response:
        # StaticFiles answers 404 for a name it does not hold (outside its directory too)
        # and 304 to a browser's revalidation.
        return await assets.get_response(request.path_params["name"], request.scope)

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root_path(request)
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + oauth2_redirect_url,
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        return _same_origin_only(page)

    async def swagger_ui_oauth2_redirect(_request: Request) -> HTMLResponse:
        return _same_origin_only(get_swagger_ui_oauth2_redirect_html())

    async def redoc(request: Request) -> HTMLResponse:
        root = _root_path(request)
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        return _same_origin_only(page, REDOC_SOURCES)

    routes: dict[str, Callable[[Request], Awaitable[Response]]] = {
        f"{ASSETS_URL}/{{name}}": asset,
        DOCS_URL: swagger_ui,
        oauth2_redirect_url: swagger_ui_oauth2_redirect,
        REDOC_URL: redoc,
    }
    for path, endpoint in routes.items():
        # GET routes answer HEAD too (Starlette adds it).
        app.add_route(path, endpoint, methods=["GET"], include_in_schema=False)


def _root_path(request: Request) -> str:
    root_path: str = request.scope.get("root_path", "")
    return root_path.rstrip("/")


def _same_origin_only(page: HTMLResponse, extra: Mapping[str, str] | None = None) -> HTMLResponse:
    """Allow the page this origin's resources and its own inline scripts (by hash), nothing else."""
    hashes = [
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(bytes(page.body).decode())
    ]
    directives = {
        "default-src": "'none'",
        "script-src": " ".join(["'self'", *hashes]),
        "style-src": "'self'",
        "img-src": "'self' data:",
        "connect-src": "'self'",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "'none'",
        **(extra or {}),
    }
    page.headers["Content-Security-Policy"] = "; ".join(
        f"{name} {value}" for name, value in directives.items()
    )
    return page
