from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from blogapi.users.schemas import Email, Password

MAIL_TOKEN_MAX = 128
_EXAMPLE_TOKEN = "Zt1cN0mVq8p3Jr6yW2sXe5Lk9Hb4Gd7Fa0Ru1Ty3Io8"  # noqa: S105  (an example)


class PasswordResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"email": "ada@example.com"}]})

    email: Email


class PasswordResetConfirm(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"token": _EXAMPLE_TOKEN, "new_password": "a new correct horse"}]},
    )

    token: str = Field(
        min_length=1, max_length=MAIL_TOKEN_MAX, description="The token from the password reset mail."
    )
    new_password: Password


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"token": _EXAMPLE_TOKEN}]})

    token: str = Field(
        min_length=1, max_length=MAIL_TOKEN_MAX, description="The token from the verification mail."
    )


class Accepted(BaseModel):
    detail: str = Field(description="What happens next: the same words whatever the outcome.")
