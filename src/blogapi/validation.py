"""Text checks shared by the schemas: what every backend can store, checked before it is sent."""

from __future__ import annotations

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic_core import PydanticCustomError

# No C0 control characters (NUL in particular, which PostgreSQL text cannot hold) nor DEL.
SINGLE_LINE = r"^[^\x00-\x1f\x7f]*$"
# Multi-line text may keep tabs and line breaks.
MULTI_LINE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
# Secrets and login names may hold anything but NUL, which no database text nor login carries.
WITHOUT_NUL = r"^[^\x00]*$"


def in_words(message: str) -> WrapValidator:
    """Report a failed `pattern` as `message`: pydantic's own message quotes the regular expression.

    The pattern stays in the JSON schema (clients and the fuzzer generate from it); only
    what a client reads changes. Every other error passes through.
    """

    def validate(value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError as exc:
            if any(error["type"] == "string_pattern_mismatch" for error in exc.errors()):
                raise PydanticCustomError("string_pattern_mismatch", message) from None
            raise

    return WrapValidator(validate)


SingleLineInWords = in_words("must be a single line of text without control characters")
MultiLineInWords = in_words("must be text without control characters (tabs and line breaks are allowed)")
WithoutNulInWords = in_words("must not contain NUL characters")


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
