from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
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
# Letters (with their combining marks) and digits of any script, and `-_.+#` (`c++`, `C#`,
# `node.js`, `machine_learning`), with at least one letter or digit. Never a comma: a post's
# tags are read back joined by commas (posts/service.py).
TAG_PATTERN = r"^[\p{L}\p{M}\p{N}_.+#-]*[\p{L}\p{N}][\p{L}\p{M}\p{N}_.+#-]*$"


def _normalize_tag(value: object) -> object:
    # One tag, one spelling: composed (NFC, so an NFD "café" is the same tag and its length
    # counts characters as written) and lower-cased (tags are case-insensitive; the column
    # compares bytes on every backend). Lower-casing can decompose ("İ"): NFC once more.
    if isinstance(value, str):
        return unicodedata.normalize("NFC", unicodedata.normalize("NFC", value).lower())
    return value


TagName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=TAG_MAX, pattern=TAG_PATTERN),
    BeforeValidator(_normalize_tag),
    in_words(
        "may hold only letters and digits (any script) and - _ . + #, with at least one letter or digit"
    ),
]


def _distinct_sorted(names: list[str]) -> list[str]:
    return sorted(set(names))


TagNames = Annotated[
    list[TagName],
    Field(max_length=TAGS_PER_POST_MAX, description="Lower-cased and NFC-normalised; duplicates collapse."),
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
