"""Schemathesis hooks for `make fuzz`: authentication that survives the fuzzer, and one check.

Loaded by schemathesis through `SCHEMATHESIS_HOOKS` (fuzz/run.py sets it, with the
service's URL in BLOGAPI_FUZZ_URL and its environment, DATABASE_URL included).

Authentication. The fuzzer may change the password of the account whose token it holds
(every earlier token then gets 401), take away its admin rights, or delete it. So tokens
come from a provider that makes a fresh account and logs it in, and schemathesis drops the
cached token and replays the request once when an authenticated request gets 401
(`retry_on`). Its stateful phase does not (schemathesis 4.32: only the unit phases call
`reauth_and_replay`), so there an `after_call` hook drops the token on such a 401 and the
scenario's next steps log in afresh. Requests schemathesis sends without credentials or with broken ones on
purpose (`ignored_auth`, `missing_required_header`) are left alone: they must get 401.
BLOGAPI_FUZZ_ROLE picks the account: `user` signs up over the API (POST /api/v1/users);
`admin` is made with `blogapi create-admin`, the only way to make one, so that the fuzzer
also reaches what only an admin may do (changing and deleting anyone).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import unicodedata
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
import schemathesis
from schemathesis.auths import refresh_auth
from schemathesis.generation.meta import TestPhase
from schemathesis.specs.openapi.checks import ensure_resource_availability

BASE_URL = os.environ.get("BLOGAPI_FUZZ_URL", "http://127.0.0.1:8000")
ROLE = os.environ.get("BLOGAPI_FUZZ_ROLE", "user")
PASSWORD = "fuzz-password-0123456789"  # noqa: S105  (throwaway accounts on a throwaway database)
TIMEOUT = 30
BLOGAPI = Path(sys.executable).parent / "blogapi"

_counter = itertools.count(1)
_lock = threading.Lock()
# The bearer headers new_token has handed out, to tell our stale token from one the fuzzer
# broke or left out on purpose.
_issued: set[str] = set()


def _create_user(email: str, name: str) -> None:
    response = requests.post(
        f"{BASE_URL}/api/v1/users",
        json={"name": name, "email": email, "password": PASSWORD},
        timeout=TIMEOUT,
    )
    if response.status_code != 201:
        raise RuntimeError(f"sign-up failed: {response.status_code} {response.text[:300]}")


def _create_admin(email: str, name: str) -> None:
    result = subprocess.run(  # noqa: S603  (our own CLI)
        [str(BLOGAPI), "create-admin", "--email", email, "--name", name],
        env={**os.environ, "BLOGAPI_ADMIN_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"blogapi create-admin failed: {result.stdout}{result.stderr}")


def new_token() -> str:
    """Make a new account (per BLOGAPI_FUZZ_ROLE) and log it in; its bearer token."""
    with _lock:
        number = next(_counter)
    email = f"fuzz-{ROLE}-{number}-{uuid.uuid4().hex[:12]}@fuzz.example"
    name = f"Fuzz {ROLE} {number}"
    if ROLE == "admin":
        _create_admin(email, name)
    else:
        _create_user(email, name)
    login = requests.post(
        f"{BASE_URL}/api/v1/auth/token",
        data={"username": email, "password": PASSWORD},
        timeout=TIMEOUT,
    )
    if login.status_code != 200:
        raise RuntimeError(f"login failed: {login.status_code} {login.text[:300]}")
    token: str = login.json()["access_token"]
    with _lock:
        _issued.add(f"Bearer {token}")
    return token


# Access tokens live ACCESS_TOKEN_MINUTES (15 by default): renewed well before they expire.
@schemathesis.auth(refresh_interval=600, retry_on=[401])
class FreshAccount:
    """A bearer token for a live account; replaced when the API answers 401."""

    def get(self, case: Any, context: Any) -> str:
        return new_token()

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


def _stale_token_in_stateful_step(case: Any, response: Any) -> bool:
    """A stateful step sent with a token we issued got 401: the fuzzer ended that session.

    (It changed its own password, logged out, deleted or disabled its account.) The unit
    phases replay such a request themselves (`retry_on`); the stateful phase does not.
    """
    meta = case.meta
    return (
        meta is not None
        and meta.phase.name == TestPhase.STATEFUL
        and response.status_code == 401
        and response.request.headers.get("Authorization") in _issued
    )


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    if _stale_token_in_stateful_step(case, response):
        refresh_auth(case)  # the provider's cached token is dropped; the next step gets a new one


# --- rejections that depend on server state ---------------------------------------------
#
# Four inputs are valid or not depending on what the server holds, which no JSON Schema can
# say: an If-Match tag (valid only while it names the current version, else 412), a
# pagination cursor (valid only if this service signed it with its secret, else 422), an
# Idempotency-Key (valid only if not used before with another body, else 422), and a token
# from a mail (valid only if issued and unused, else 400 with its type).
# schemathesis.toml lets `positive_data_acceptance` accept 412 / 422 on exactly the
# operations taking such an input; this check takes back the rest: on those operations, a
# schema-valid request answered 412 or 422 for any other reason still fails the run.

IF_MATCH_OPERATIONS = frozenset(
    {
        "PATCH /api/v1/users/{user_id}",
        "DELETE /api/v1/users/{user_id}",
        "PATCH /api/v1/posts/{post_id}",
        "DELETE /api/v1/posts/{post_id}",
    }
)
CURSOR_OPERATIONS = frozenset(
    {
        "GET /api/v1/users",
        "GET /api/v1/users/{user_id}/posts",
        "GET /api/v1/posts",
        "GET /api/v1/tags",
        "GET /api/v1/users/me/sessions",
    }
)
IDEMPOTENCY_OPERATIONS = frozenset({"POST /api/v1/users", "POST /api/v1/posts"})
# A token from a mail is valid only if the service issued it and it is unused: 400 with the
# token's own type otherwise (the fuzzer never reads the mail, so nearly all are 400).
TOKEN_OPERATIONS = {
    "POST /api/v1/auth/password-reset/confirm": "https://blogapi.dev/problems/invalid-reset-token",
    "POST /api/v1/auth/verify": "https://blogapi.dev/problems/invalid-verification-token",
}
TAGS_AND_IF_MATCH = "PATCH /api/v1/posts/{post_id}"
# The problem types of these rejections (docs/problems.md).
PROBLEM_TYPES = "https://blogapi.dev/problems/"
CURSOR_REJECTION = PROBLEM_TYPES + "invalid-cursor"
IDEMPOTENCY_REJECTION = PROBLEM_TYPES + "idempotency-key-reused"
STALE_IF_MATCH = PROBLEM_TYPES + "precondition-failed"


def _problem_type(response: Any) -> str:
    try:
        problem_type = response.json().get("type", "")
    except Exception:
        return ""
    return problem_type if isinstance(problem_type, str) else ""


def _explained_by_state(operation: str, response: Any) -> bool:
    """Whether this 412/422 is what the server must answer to an input it cannot honour."""
    request = response.request
    problem_type = _problem_type(response)
    if operation in TOKEN_OPERATIONS:
        return response.status_code == 400 and problem_type == TOKEN_OPERATIONS[operation]
    if response.status_code == 412:
        if_match = request.headers.get("If-Match")
        tags = {tag.strip() for tag in (if_match or "").split(",")}
        stale = operation in IF_MATCH_OPERATIONS and if_match is not None and "*" not in tags
        return stale and problem_type == STALE_IF_MATCH
    if operation in CURSOR_OPERATIONS:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query, keep_blank_values=True)
        return "cursor" in query and problem_type == CURSOR_REJECTION
    if operation in IDEMPOTENCY_OPERATIONS:
        return request.headers.get("Idempotency-Key") is not None and problem_type == IDEMPOTENCY_REJECTION
    return False


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item)


def _holds_unassigned_code_points(case: Any) -> bool:
    r"""Whether the generated input has a code point Unicode leaves unassigned.

    Schemathesis reads `\p{M}` in a pattern (tags allow combining marks) as whole Unicode
    blocks, U+20D0-20FF included, whose end is unassigned: no mark, so the API is right to
    refuse it. Only such inputs are exempt, whatever their field.
    """
    return any(
        unicodedata.category(char) == "Cn" for text in _texts([case.body, case.query]) for char in text
    )


@schemathesis.check
def positive_data_rejected_only_for_server_state(ctx: Any, response: Any, case: Any) -> None:
    meta = case.meta
    operation = case.operation.label
    if meta is None or not meta.generation.mode.is_positive or _holds_unassigned_code_points(case):
        return
    # PATCH /posts takes tags as well as If-Match: its 422s are for unassigned code points only.
    relaxed = (
        (412, 422)
        if operation == TAGS_AND_IF_MATCH
        else (412,)
        if operation in IF_MATCH_OPERATIONS
        else (400,)
        if operation in TOKEN_OPERATIONS
        else (422,)
    )
    if (
        operation
        not in IF_MATCH_OPERATIONS | CURSOR_OPERATIONS | IDEMPOTENCY_OPERATIONS | TOKEN_OPERATIONS.keys()
    ):
        return
    if response.status_code in relaxed and not _explained_by_state(operation, response):
        raise AssertionError(
            f"Schema-valid request answered {response.status_code}, and not because of an If-Match,"
            f" cursor, Idempotency-Key or mailed token the server could not honour: {response.text[:300]}"
        )


# --- replays of an earlier creation -------------------------------------------------------
#
# The fuzzer draws short Idempotency-Key values (`0`, `A`) again and again, in unrelated test
# cases. A POST whose key and body were seen before gets the stored 201 back, marked
# `Idempotent-Replayed: true` (draft-ietf-httpapi-idempotency-key-header): it names the post
# made back then, which a later case may have deleted. A 404 for it is right, and not the
# "created resource not found" (ST302) that `ensure_resource_availability` reports. So the
# built-in check is off (schemathesis.toml) and runs through this one, which skips exactly
# the follow-ups of a replayed creation; everything else goes to the built-in unchanged.

REPLAYED_HEADER = "idempotent-replayed"


def _is_replay(operation: str, response: Any) -> bool:
    """Whether `response` is the stored answer to an earlier POST with the same key."""
    return (
        operation in IDEMPOTENCY_OPERATIONS
        and response.status_code == 201
        and response.headers.get(REPLAYED_HEADER, []) == ["true"]
        and response.request.headers.get("Idempotency-Key") is not None
    )


@schemathesis.check
def ensure_resource_availability_unless_replayed(ctx: Any, response: Any, case: Any) -> bool | None:
    parent = ctx.internals.find_parent(case_id=case.id)
    if parent is not None:
        parent_response = ctx.internals.find_response(case_id=parent.id)
        if parent_response is not None and _is_replay(parent.operation.label, parent_response):
            return None
    result: bool | None = ensure_resource_availability(ctx, response, case)
    return result


# --- cases labelled positive that are not ---------------------------------------------------
#
# The coverage phase builds headers from letters and digits only (schemathesis'
# HEADER_ALLOWED_CHARS), so it has no valid value for If-Match, whose pattern needs `"` or
# `*` (RFC 9110 entity tags). It then fills the header with a negative value (`0`) and still
# labels some cases positive, because they vary another part (say a near-boundary post_id):
# the case's own metadata says its header part is negative. The service rightly answers 422;
# `positive_data_acceptance` would call that a rejected valid request. Such a case is neither
# positive nor a deliberate negative one, so it is not sent. Consistent cases, positive or
# negative, are all kept: negative If-Match values are still sent, as negative cases.


def _labelled_positive_with_a_negative_part(case: Any) -> bool:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return False
    return any(component.mode.is_negative for component in meta.components.values())


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    return not _labelled_positive_with_a_negative_part(case)
