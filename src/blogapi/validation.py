"""Text checks shared by the schemas: what every backend can store, checked before it is sent."""

from __future__ import annotations

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, field_validator

# No C0 control characters (NUL in particular, which PostgreSQL text cannot hold) nor DEL.
SINGLE_LINE = r"^[^\x00-\x1f\x7f]*$"
# Multi-line text may keep tabs and line breaks.
MULTI_LINE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"


def is_utf8(text: str) -> bool:
    """Whether `text` can be encoded as UTF-8, i.e. holds no lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _encodable(value: str) -> str:
    if not is_utf8(value):
        raise ValueError("text must be valid Unicode (no lone surrogates)")
    return value


Encodable = AfterValidator(_encodable)
"""Rejects lone surrogates: JSON can carry them, UTF-8 (and so no database) cannot."""


def _strip_spaces(value: object) -> object:
    return value.strip(" ") if isinstance(value, str) else value


StripSpaces = BeforeValidator(_strip_spaces)
"""Trims spaces before the length and pattern checks (which then see any control character at the ends)."""


class PartialUpdate(BaseModel):
    """Base for PATCH bodies: a field may be left out, but not sent as null.

    Fields are declared `T | SkipJsonSchema[None] = None` so that the OpenAPI document
    shows them as non-nullable while "not sent" stays distinguishable (`exclude_unset`).
    """

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may be left out, but not null")
        return value
