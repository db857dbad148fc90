from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from blogapi.posts.models import BODY_MAX, TAG_MAX, TAGS_PER_POST_MAX, TITLE_MAX
from blogapi.users.schemas import Author
from blogapi.validation import (
    MULTI_LINE,
    SINGLE_LINE,
    Encodable,
    MultiLineInWords,
    PartialUpdate,
    SingleLineInWords,
    StripSpaces,
    in_words,
)

Title = Annotated[
    str,
    StringConstraints(min_length=1, max_length=TITLE_MAX, pattern=SINGLE_LINE),
    Encodable,
    StripSpaces,
    SingleLineInWords,
]
Body = Annotated[str, StringConstraints(max_length=BODY_MAX, pattern=MULTI_LINE), Encodable, MultiLineInWords]
TagName = Annotated[
    str,
    StringConstraints(to_lower=True, min_length=1, max_length=TAG_MAX, pattern=r"^[A-Za-z0-9-]+$"),
    in_words("may hold only letters, digits and hyphens"),
]


def _distinct_sorted(names: list[str]) -> list[str]:
    return sorted(set(names))


TagNames = Annotated[
    list[TagName],
    Field(max_length=TAGS_PER_POST_MAX, description="Lower-cased; duplicates collapse."),
    AfterValidator(_distinct_sorted),
]


class PostCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"title": "Notes on the engine", "body": "It weaves algebra.", "tags": ["maths"]}]
        },
    )

    title: Title
    body: Body = ""
    tags: TagNames = []


class PostUpdate(PartialUpdate):
    """Only the fields sent are changed; none may be null. `tags` replaces the post's tags."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"title": "Notes", "tags": ["maths", "history"]}]}
    )

    title: Title | SkipJsonSchema[None] = None
    body: Body | SkipJsonSchema[None] = None
    tags: TagNames | SkipJsonSchema[None] = None


class PostRead(BaseModel):
    id: int
    title: str
    body: str
    author: Author
    tags: list[str]
    created_at: datetime
    updated_at: datetime


class TagRead(BaseModel):
    name: str
    post_count: int
