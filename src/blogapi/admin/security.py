"""The admin console's cookies, CSRF tokens and response headers.

The console is plain HTML forms and one stylesheet: no script at all, so its content
security policy allows none, and nothing from another origin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import Response

from blogapi.auth.security import TokenSubject, create_access_token, read_access_token

PREFIX = "/admin"
SESSION_COOKIE = "blogapi_admin_session"
CSRF_COOKIE = "blogapi_admin_csrf"
CSRF_FIELD = "csrf_token"
SESSION_LIFETIME = timedelta(hours=8)
"""How long an admin stays logged in to the console (never past the login's session)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # Pages show emails and carry CSRF tokens: no cache keeps them.
    "Cache-Control": "no-store",
}
# Fetch metadata: a browser says where a request comes from, and a page cannot forge it.
_FOREIGN_SITES = {"cross-site", "same-site"}


def secure_headers(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None) -> None:
    # Secure over https (also behind a proxy uvicorn trusts for X-Forwarded-Proto); over
    # plain http (development) a Secure cookie would never come back.
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PREFIX,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def start_session(
    request: Request, response: Response, subject: TokenSubject, secret: str, lifetime: timedelta
) -> None:
    """Log the browser in: the cookie is an access token of the admin's new login session."""
    lifetime = min(lifetime, SESSION_LIFETIME)
    token = create_access_token(subject, secret=secret, lifetime=lifetime)
    _set_cookie(request, response, SESSION_COOKIE, token, int(lifetime.total_seconds()))


def end_session(request: Request, response: Response) -> None:
    _set_cookie(request, response, SESSION_COOKIE, "", 0)


def session_subject(request: Request, secret: str) -> TokenSubject | None:
    """The login session the browser's cookie names, if its token is valid (not yet known to be open)."""
    token = request.cookies.get(SESSION_COOKIE)
    return read_access_token(token, secret=secret) if token else None


def csrf_cookie(request: Request) -> tuple[str, bool]:
    """The browser's CSRF cookie, or a new one (True: set it on the response)."""
    cookie = request.cookies.get(CSRF_COOKIE)
    return (cookie, False) if cookie else (secrets.token_urlsafe(32), True)


def set_csrf_cookie(request: Request, response: Response, cookie: str) -> None:
    _set_cookie(request, response, CSRF_COOKIE, cookie, None)


def csrf_token(cookie: str, secret: str) -> str:
    """The token a form carries: derived from the browser's CSRF cookie.

    Another site can neither read the cookie nor compute the token, and SameSite=Strict
    keeps the browser from sending the cookie along with its forms anyway.
    """
    return hmac.new(secret.encode(), f"admin-csrf:{cookie}".encode(), hashlib.sha256).hexdigest()


def csrf_valid(request: Request, submitted: object, secret: str) -> bool:
    if request.headers.get("sec-fetch-site") in _FOREIGN_SITES:
        return False
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not isinstance(submitted, str):
        return False
    return hmac.compare_digest(csrf_token(cookie, secret), submitted)
