from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Mapped, mapped_column

from blogapi.db import Base, UTCDateTime, binary_string

BUCKET_MAX = 320


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
