from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from blogapi.db import (
    FOLD_GROWTH,
    Base,
    UTCDateTime,
    binary_string,
    created_at_or_now,
    fold_for_search,
    folded_copy_of,
    utcnow,
)

if TYPE_CHECKING:
    from blogapi.posts.models import Post

NAME_MAX = 100
EMAIL_MAX = 254
PASSWORD_HASH_MAX = 255


class User(Base):
    __tablename__ = "user"
    # SQLite would otherwise hand a deleted user's id to the next sign-up, and the deleted
    # user's still-valid token would open the new account.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    name_folded: Mapped[str] = mapped_column(
        binary_string(FOLD_GROWTH * NAME_MAX), default=folded_copy_of("name")
    )
    """The name as `?q=` searches it (db.fold_for_search): kept by the ORM and by Core inserts."""
    # Stored lower-cased, compared byte for byte: josé@ and jose@ are two accounts everywhere.
    email: Mapped[str] = mapped_column(binary_string(EMAIL_MAX), unique=True)
    password_hash: Mapped[str] = mapped_column(String(PASSWORD_HASH_MAX))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # '1' as text: a boolean literal every backend takes (PostgreSQL casts it; MariaDB and
    # SQLite store 1), and that MariaDB reports back as it was given (`true` would read as 1).
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    """False: disabled by an admin. Cannot log in, every session ended; posts stay readable."""
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    """The owner proved `email` is theirs (a token mailed to it). False for accounts from before
    verification existed, until they verify."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=created_at_or_now, onupdate=utcnow)
    version: Mapped[int] = mapped_column(server_default=text("1"))
    """Counts changes (the ETag); the ORM adds `AND version = :loaded` to every UPDATE."""
    token_version: Mapped[int] = mapped_column(default=1, server_default=text("1"))
    """No longer read: tokens were bound to it before sessions (auth/sessions), which a
    password change now ends instead. Kept because dropping it rebuilds the user table on
    SQLite; a later migration may drop it."""

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012  (read once, by the mapper)

    posts: Mapped[list[Post]] = relationship(back_populates="author", lazy="raise", passive_deletes=True)

    @validates("name")
    def _fold_name(self, _key: str, name: str) -> str:
        self.name_folded = fold_for_search(name)
        return name
