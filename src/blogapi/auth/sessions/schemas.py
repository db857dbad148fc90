from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

REFRESH_TOKEN_MAX = 128


class RefreshRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"refresh_token": "q3Jx0bV0k8m2s3Zl6d5nqX1t0G7yHc4e9rT2wPzA-sE"}]},
    )

    refresh_token: str = Field(
        min_length=1,
        max_length=REFRESH_TOKEN_MAX,
        description="The `refresh_token` of the last login or refresh; each one works once.",
    )


class SessionRead(BaseModel):
    id: int
    created_at: datetime = Field(description="When the session's login happened.")
    last_used_at: datetime = Field(description="Its last request, to the minute.")
    expires_at: datetime = Field(description="When it ends unless ended before: log in again then.")
    address: str = Field(description="The client address it logged in from.")
    user_agent: str = Field(description="The `User-Agent` it logged in with (cut to 255 characters).")
    current: bool = Field(description="Whether it is the session of the token this request carries.")
