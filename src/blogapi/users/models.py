from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, String
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column, relationship

from blogapi.db import Base, UTCDateTime, created_at_or_now, utcnow

if TYPE_CHECKING:
    from blogapi.posts.models import Post

NAME_MAX = 100
EMAIL_MAX = 254
PASSWORD_HASH_MAX = 255

# Emails are stored lower-cased and compared byte for byte: MariaDB's default collation
# would also fold accents (josé@ = jose@), which no other backend does.
EmailType = String(EMAIL_MAX).with_variant(
    mysql.VARCHAR(EMAIL_MAX, collation="utf8mb4_bin"), "mysql", "mariadb"
)


class User(Base):
    __tablename__ = "user"
    # SQLite would otherwise hand a deleted user's id to the next sign-up, and the deleted
    # user's still-valid token would open the new account.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    email: Mapped[str] = mapped_column(EmailType, unique=True)
    password_hash: Mapped[str] = mapped_column(String(PASSWORD_HASH_MAX))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=created_at_or_now, onupdate=utcnow)

    posts: Mapped[list[Post]] = relationship(back_populates="author", lazy="raise", passive_deletes=True)
