from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Index, String, Table, Text, text
from sqlalchemy.dialects import mysql
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
from blogapi.users.models import User

TITLE_MAX = 200
BODY_MAX = 20_000
TAG_MAX = 32
TAGS_PER_POST_MAX = 20

# 20,000 four-byte characters do not fit MariaDB's TEXT (65,535 bytes).
BodyType = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")

post_tag = Table(
    "post_tag",
    Base.metadata,
    Column("post_id", ForeignKey("post.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tag.id", ondelete="CASCADE"), primary_key=True),
    # The post's created_at, written with the link (a post's created_at never changes): a
    # tag's posts are then one range of the index below, in the main list's page order.
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_post_tag_tag_id_created_at_post_id", "tag_id", "created_at", "post_id"),
)


class Tag(Base):
    __tablename__ = "tag"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(binary_string(TAG_MAX), unique=True)
    post_count: Mapped[int] = mapped_column(server_default=text("0"))
    """How many posts carry the tag: changed with the links, in the same transaction
    (posts/service.py), so it is exact; a tag at 0 is not listed."""


# GET /tags: most used first, ties by name; a page is one range of this index.
Index("ix_tag_post_count_name", Tag.post_count.desc(), Tag.name)


class Post(Base):
    __tablename__ = "post"
    __table_args__ = (
        # Keyset pages: newest first, overall and per author.
        Index("ix_post_created_at_id", "created_at", "id"),
        Index("ix_post_author_id_created_at_id", "author_id", "created_at", "id"),
        # Never reuse a deleted post's id (SQLite reuses the highest one without this).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(TITLE_MAX))
    title_folded: Mapped[str] = mapped_column(
        binary_string(FOLD_GROWTH * TITLE_MAX), default=folded_copy_of("title")
    )
    """The title as `?q=` searches it (db.fold_for_search): kept by the ORM and by Core inserts."""
    body: Mapped[str] = mapped_column(BodyType, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=created_at_or_now, onupdate=utcnow)
    version: Mapped[int] = mapped_column(server_default=text("1"))
    """Counts changes (the ETag); the ORM adds `AND version = :loaded` to every UPDATE."""

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012  (read once, by the mapper)

    author: Mapped[User] = relationship(back_populates="posts", lazy="raise")
    tags: Mapped[list[Tag]] = relationship(secondary=post_tag, lazy="raise", order_by=Tag.name)

    @validates("title")
    def _fold_title(self, _key: str, title: str) -> str:
        self.title_folded = fold_for_search(title)
        return title
