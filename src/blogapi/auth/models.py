from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Mapped, mapped_column

from blogapi.db import Base, UTCDateTime, binary_string

BUCKET_MAX = 320


class LoginFailures(Base):
    """Failed logins per account or per client address, in a fixed window.

    Kept in the database so that every worker process sees the same counts.
    """

    __tablename__ = "login_failures"

    bucket: Mapped[str] = mapped_column(binary_string(BUCKET_MAX), primary_key=True)
    failures: Mapped[int]
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
