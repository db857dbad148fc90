from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from blogapi.users.models import EMAIL_MAX, NAME_MAX
from blogapi.validation import SINGLE_LINE, Encodable, PartialUpdate, SingleLineInWords, StripSpaces, in_words

PASSWORD_MIN = 8
PASSWORD_MAX = 128

Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=NAME_MAX, pattern=SINGLE_LINE),
    Encodable,
    StripSpaces,
    SingleLineInWords,
]
# Lower-cased so that Alice@Example.com and alice@example.com are one account.
Email = Annotated[
    str,
    StringConstraints(
        to_lower=True,
        max_length=EMAIL_MAX,
        # Not \s alone: pydantic's (Rust) \s includes U+0085, OpenAPI's (ECMA-262) U+FEFF instead.
        pattern=r"^[^@\s\x00-\x1f\x7f-\x9f\uFEFF]+@[^@\s\x00-\x1f\x7f-\x9f\uFEFF.]+(\.[^@\s\x00-\x1f\x7f-\x9f\uFEFF.]+)+$",
    ),
    Encodable,
    in_words("not a valid email address: one @, a domain with a dot, and no spaces or control characters"),
]
Password = Annotated[str, StringConstraints(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX), Encodable]


class UserCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "Ada Lovelace", "email": "ada@example.com", "password": "correct horse"}]
        },
    )

    name: Name
    email: Email
    password: Password


class UserUpdate(PartialUpdate):
    """Only the fields sent are changed; none may be null."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "Ada King"}]})

    name: Name | SkipJsonSchema[None] = None
    email: Email | SkipJsonSchema[None] = None
    password: Password | SkipJsonSchema[None] = None
    is_admin: StrictBool | SkipJsonSchema[None] = Field(
        default=None, description="Only an admin may change this."
    )


class UserRead(BaseModel):
    id: int
    name: str
    email: str | None = Field(description="Shown only to the user themself and to admins.")
    is_admin: bool
    created_at: datetime
    updated_at: datetime


class Author(BaseModel):
    id: int
    name: str
