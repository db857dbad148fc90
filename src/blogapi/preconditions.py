"""Optimistic concurrency over HTTP: versions as strong ETags, checked against If-Match."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header

from blogapi.errors import PreconditionFailed

IfMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=1024,
        description=(
            "The ETag from a GET: the change is made only if the resource is still at that version"
            " (412 otherwise). Without If-Match the change is made unconditionally."
        ),
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
