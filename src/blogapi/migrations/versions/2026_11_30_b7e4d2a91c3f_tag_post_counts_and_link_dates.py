"""tag post counts and link dates

`GET /tags` read every link to count them, and `?tag=` walked the whole post list testing
each post's tags. The counts are now kept on the tag, and a link carries its post's
created_at, so that both lists are a range of an index.

Revision ID: b7e4d2a91c3f
Revises: 5d0c3a7e9b21
Create Date: 2026-11-30 23:00:00
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "b7e4d2a91c3f"
down_revision: str | None = "5d0c3a7e9b21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc_datetime() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


tag = sa.table("tag", sa.column("id", sa.Integer), sa.column("post_count", sa.Integer))
post = sa.table("post", sa.column("id", sa.Integer), sa.column("created_at", _utc_datetime()))
post_tag = sa.table(
    "post_tag",
    sa.column("post_id", sa.Integer),
    sa.column("tag_id", sa.Integer),
    sa.column("created_at", _utc_datetime()),
)


def upgrade() -> None:
    # A NOT NULL column with a constant default is a plain ADD COLUMN, even on SQLite.
    op.add_column("tag", sa.Column("post_count", sa.Integer(), server_default=sa.text("0"), nullable=False))
    # Set-based, one statement each: a correlated count per tag (by the tag_id index), and
    # the links' dates joined from their posts (UPDATE ... FROM, or MariaDB's multi-table UPDATE).
    links_of_tag = (
        sa.select(sa.func.count())
        .select_from(post_tag)
        .where(post_tag.c.tag_id == tag.c.id)
        .scalar_subquery()
    )
    op.execute(sa.update(tag).values(post_count=links_of_tag))
    op.create_index("ix_tag_post_count_name", "tag", [sa.desc(sa.column("post_count")), "name"])

    op.add_column("post_tag", sa.Column("created_at", _utc_datetime(), nullable=True))
    op.execute(
        sa.update(post_tag).values(created_at=post.c.created_at).where(post_tag.c.post_id == post.c.id)
    )
    # post_tag has no AUTOINCREMENT to keep: SQLite's copy needs no table_kwargs.
    with op.batch_alter_table("post_tag") as batch_op:
        batch_op.alter_column("created_at", existing_type=_utc_datetime(), nullable=False)
    # Created before the tag_id index goes: MariaDB's foreign key on tag_id needs one of them.
    op.create_index("ix_post_tag_tag_id_created_at_post_id", "post_tag", ["tag_id", "created_at", "post_id"])
    op.drop_index("ix_post_tag_tag_id", table_name="post_tag")


def downgrade() -> None:
    op.create_index("ix_post_tag_tag_id", "post_tag", ["tag_id"])
    op.drop_index("ix_post_tag_tag_id_created_at_post_id", table_name="post_tag")
    with op.batch_alter_table("post_tag") as batch_op:
        batch_op.drop_column("created_at")
    op.drop_index("ix_tag_post_count_name", table_name="tag")
    with op.batch_alter_table("tag") as batch_op:
        batch_op.drop_column("post_count")
