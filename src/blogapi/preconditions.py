"""Versions as strong ETags: If-Match for optimistic concurrency, If-None-Match for conditional reads."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Header, Response
from pydantic import StringConstraints
from pydantic.json_schema import SkipJsonSchema

from blogapi.errors import PreconditionFailed
from blogapi.validation import in_words

# RFC 9110 13.1.1: If-Match = "*" / #entity-tag, entity-tag = [ W/ ] DQUOTE *etagc DQUOTE,
# etagc = %x21 / %x23-7E (obs-text left out: no tag this service issues holds any). In the
# OpenAPI document too, so that clients and the fuzzer send tags, not arbitrary text.
_ENTITY_TAG = r'(W/)?"[\x21\x23-\x7e]*"'
IF_MATCH_PATTERN = rf"^[ \t]*(\*|{_ENTITY_TAG}([ \t]*,[ \t]*{_ENTITY_TAG})*)[ \t]*$"

# Optional, never null: a header has no null, and the fuzzer would send the text "null".
IfMatchHeader = Annotated[
    Annotated[str, StringConstraints(max_length=1024, pattern=IF_MATCH_PATTERN)] | SkipJsonSchema[None],
    Header(
        alias="If-Match",
        description=(
            'The ETag from a GET (such as `"3"`), a comma-separated list of them, or `*`: the'
            " change is made only if the resource is still at that version (412 otherwise)."
            " Without If-Match the change is made unconditionally."
        ),
    ),
    in_words('must be "*" or entity tags such as "3", separated by commas (RFC 9110)'),
]

IfNoneMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        max_length=1024,
        description="ETags from earlier GETs: 304 without a body if one is the current version.",
    ),
]

ETAG_HEADER = {
    "ETag": {
        "description": "The representation's version (strong, opaque): send it in If-Match or If-None-Match.",
        "schema": {"type": "string"},
    }
}


def etag(*parts: int | str) -> str:
    """A strong ETag naming everything a representation shows: `"3"`, `"3.7"`, `"3.public"`.

    A post shows its author's name, so its tag names the post's and the author's versions: a
    rename changes it. A user shown without their email (to anyone but themself or an admin)
    has a tag of its own, so a cached anonymous copy is never confirmed to its owner.
    """
    return '"' + ".".join(str(part) for part in parts) + '"'


def require_match(if_match: str | None, current: str) -> None:
    """Raise PreconditionFailed unless If-Match is absent, `*`, or names the `current` ETag.

    Weak tags (W/"...") never match: If-Match uses the strong comparison (RFC 9110 13.1.1).
    """
    if if_match is None:
        return
    tags = {tag.strip() for tag in if_match.split(",")}
    if "*" not in tags and current not in tags:
        raise PreconditionFailed("the resource has changed since you read it; GET it again")


def not_modified(if_none_match: str | None, current: str) -> bool:
    """Whether If-None-Match names the `current` ETag, or is `*`: a GET then answers 304.

    If-None-Match uses the weak comparison (RFC 9110 13.1.2): W/"3" matches "3".
    """
    if if_none_match is None:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip().removeprefix("W/")
        if tag in ("*", current):
            return True
    return False


def not_modified_response(current: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=HTTPStatus.NOT_MODIFIED, headers={"ETag": current, **(headers or {})})


NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not Modified: If-None-Match names the current version.", "headers": ETAG_HEADER}
}
