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

ETAG_HEADER = {"ETag": {"description": "The resource's version (strong).", "schema": {"type": "string"}}}


def etag(version: int) -> str:
    return f'"{version}"'


def require_match(if_match: str | None, version: int) -> None:
    """Raise PreconditionFailed unless If-Match is absent, `*`, or names this version.

    Weak tags (W/"...") never match: If-Match uses the strong comparison (RFC 9110 13.1.1).
    """
    if if_match is None:
        return
    tags = {tag.strip() for tag in if_match.split(",")}
    if "*" not in tags and etag(version) not in tags:
        raise PreconditionFailed("the resource has changed since you read it; GET it again")


def not_modified(if_none_match: str | None, version: int) -> bool:
    """Whether If-None-Match names this version, or is `*`: a GET then answers 304.

    If-None-Match uses the weak comparison (RFC 9110 13.1.2): W/"3" matches "3".
    """
    if if_none_match is None:
        return False
    current = etag(version)
    for tag in if_none_match.split(","):
        tag = tag.strip().removeprefix("W/")
        if tag in ("*", current):
            return True
    return False


def not_modified_response(version: int) -> Response:
    return Response(status_code=HTTPStatus.NOT_MODIFIED, headers={"ETag": etag(version)})


NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not Modified: If-None-Match names the current version.", "headers": ETAG_HEADER}
}
