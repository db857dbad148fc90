from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Index, String, Table, Text
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column, relationship

from blogapi.db import Base, UTCDateTime, created_at_or_now, utcnow
from blogapi.users.models import User

TITLE_MAX = 200
BODY_MAX = 20_000
TAG_MAX = 32
TAGS_PER_POST_MAX = 20

# 20,000 four-byte characters do not fit MariaDB's TEXT (65,535 bytes).
BodyType = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
TagNameType = String(TAG_MAX).with_variant(
    mysql.VARCHAR(TAG_MAX, collation="utf8mb4_bin"), "mysql", "mariadb"
)

post_tag = Table(
    "post_tag",
    Base.metadata,
    Column("post_id", ForeignKey("post.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tag.id", ondelete="CASCADE"), primary_key=True, index=True),
)


class Tag(Base):
    __tablename__ = "tag"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(TagNameType, unique=True)


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
    body: Mapped[str] = mapped_column(BodyType, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=created_at_or_now, onupdate=utcnow)

    author: Mapped[User] = relationship(back_populates="posts", lazy="raise")
    tags: Mapped[list[Tag]] = relationship(secondary=post_tag, lazy="raise", order_by=Tag.name)
