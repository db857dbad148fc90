from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from blogapi.db import Base, UTCDateTime, binary_string, utcnow

ADDRESS_MAX = 64
USER_AGENT_MAX = 255
TOKEN_HASH_LENGTH = 64  # SHA-256, hex


class LoginSession(Base):
    """One login: what its access tokens (the `sid` claim) and refresh tokens belong to.

    Revoking it (logout, reuse of a refresh token, a password change elsewhere) refuses its
    access tokens at their next request: every request reads the session's row by its
    primary key in the statement that reads the caller's user row.
    """

    __tablename__ = "session"
    # SQLite would otherwise hand a pruned session's id to the next login.
    __table_args__ = (
        Index("ix_session_user_id_id", "user_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    """The login: tokens refreshed from the session prove a login this long ago (`auth_time`)."""
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime)
    """Updated at most once a minute (TOUCH_INTERVAL), not on every request."""
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    """Fixed at login (SESSION_DAYS later); set to the moment of revocation when revoked, so
    that expired and revoked sessions are pruned by one index."""
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    address: Mapped[str] = mapped_column(String(ADDRESS_MAX))
    user_agent: Mapped[str] = mapped_column(String(USER_AGENT_MAX))


class RefreshToken(Base):
    """A refresh token, by its SHA-256 (the token itself is never stored).

    A rotated token's row stays (`rotated_at` set) until its session is pruned: presenting
    it again is how a stolen token is detected.
    """

    __tablename__ = "refresh_token"

    token_hash: Mapped[str] = mapped_column(binary_string(TOKEN_HASH_LENGTH), primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("session.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
