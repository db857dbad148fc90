from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from blogapi.db import Base, UTCDateTime, binary_string
from blogapi.users.models import EMAIL_MAX

BUCKET_MAX = 320
MAIL_TOKEN_HASH_LENGTH = 64  # SHA-256, hex
PURPOSE_MAX = 16


class LoginFailures(Base):
    """Attempts per bucket (failed logins per account, address or both; sign-ups per
    address), in a fixed window: see auth/throttle.py.

    Kept in the database so that every worker process sees the same counts. Rows whose
    window is long over are pruned (the index finds them).
    """

    __tablename__ = "login_failures"

    bucket: Mapped[str] = mapped_column(binary_string(BUCKET_MAX), primary_key=True)
    failures: Mapped[int]
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class MailToken(Base):
    """A token sent by mail, by its SHA-256 (the token itself is never stored): single use.

    `purpose` is `reset` (a password reset for `email`, the account's address when it was
    asked for), `verify` (proves `email`, the account's address) or `change` (proves `email`,
    a new address that becomes the account's once proven: REQUIRE_VERIFIED_EMAIL). Issuing
    a token deletes the account's earlier unused ones of its kind; used and expired rows are
    pruned.
    """

    __tablename__ = "mail_token"

    token_hash: Mapped[str] = mapped_column(binary_string(MAIL_TOKEN_HASH_LENGTH), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(PURPOSE_MAX))
    email: Mapped[str] = mapped_column(binary_string(EMAIL_MAX))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    """When it stops working; set to the moment of use when used, so one index finds both to prune."""
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
