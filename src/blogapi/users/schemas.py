from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StringConstraints, TypeAdapter
from pydantic.json_schema import SkipJsonSchema

from blogapi.users.models import EMAIL_MAX, NAME_MAX
from blogapi.validation import (
    SINGLE_LINE,
    WITHOUT_NUL,
    Encodable,
    PartialUpdate,
    SingleLineInWords,
    StripSpaces,
    WithoutNulInWords,
    in_words,
    is_utf8,
)

PASSWORD_MIN = 8
PASSWORD_MAX = 128

Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=NAME_MAX, pattern=SINGLE_LINE),
    Encodable,
    StripSpaces,
    SingleLineInWords,
]
_lowercase = TypeAdapter(Annotated[str, StringConstraints(to_lower=True)]).validate_python


def normalize_email(email: str) -> str:
    """The one form of an email that is stored and compared: NFC, then lower-cased.

    Every place that stores or looks up an email calls this, so Alice@Example.com and
    alice@example.com are one account, however the text was composed. Lower-casing is
    pydantic-core's (Rust's `to_lowercase`, a newer Unicode than Python 3.11's 14.0: it
    knows capitals such as U+A7CB that `str.lower()` leaves alone), which also stored every
    existing row. Not `casefold()`: it would merge distinct addresses (ß and ss).
    """
    return unicodedata.normalize("NFC", _lowercase(unicodedata.normalize("NFC", email)))


def _normalized(value: object) -> object:
    # Text that cannot be encoded is left for `Encodable` to refuse.
    return normalize_email(value) if isinstance(value, str) and is_utf8(value) else value


# The normalisation wraps the constraints (it runs first): placed before them, it would hide
# their pattern from the JSON schema, and clients and the fuzzer would not see it.
Email = Annotated[
    str,
    StringConstraints(
        max_length=EMAIL_MAX,
        # Not \s alone: pydantic's (Rust) \s includes U+0085, OpenAPI's (ECMA-262) U+FEFF instead.
        pattern=r"^[^@\s\x00-\x1f\x7f-\x9f\uFEFF]+@[^@\s\x00-\x1f\x7f-\x9f\uFEFF.]+(\.[^@\s\x00-\x1f\x7f-\x9f\uFEFF.]+)+$",
    ),
    Encodable,
    BeforeValidator(_normalized),
    in_words("not a valid email address: one @, a domain with a dot, and no spaces or control characters"),
]
# Any characters but NUL, which no login carries to the hasher (auth.service refuses it): a
# password holding one would lock its account out.
Password = Annotated[
    str,
    StringConstraints(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX, pattern=WITHOUT_NUL),
    Encodable,
    WithoutNulInWords,
]
# Checked, not set: a password chosen under an older minimum still proves who one is.
CurrentPassword = Annotated[
    str,
    StringConstraints(min_length=1, max_length=PASSWORD_MAX, pattern=WITHOUT_NUL),
    Encodable,
    WithoutNulInWords,
]


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
    is_active: StrictBool | SkipJsonSchema[None] = Field(
        default=None,
        description="Only an admin may change this. `false` disables the account: it cannot log in,"
        " its sessions end, its posts stay readable.",
    )
    current_password: CurrentPassword | SkipJsonSchema[None] = Field(
        default=None,
        description="Your password: needed to change your own `password` or `email` unless you"
        " logged in within the last few minutes (`RECENT_LOGIN_MINUTES`). Not stored.",
    )


class UserRead(BaseModel):
    id: int
    name: str
    email: str | None = Field(description="Shown only to the user themself and to admins.")
    is_admin: bool
    is_active: bool | None = Field(
        description="Whether the account may log in (an admin may disable it). Shown only to the user"
        " themself and to admins."
    )
    email_verified: bool | None = Field(
        description="Whether the owner proved `email` is theirs (a token mailed to it, `POST"
        " /auth/verify`). Shown only to the user themself and to admins."
    )
    created_at: datetime
    updated_at: datetime


class Author(BaseModel):
    id: int
    name: str
