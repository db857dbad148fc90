"""versions, idempotency keys and login throttling

Revision ID: e85857054783
Revises: c8f59356205a
Create Date: 2026-11-25 15:51:34
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "e85857054783"
down_revision: str | None = "c8f59356205a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _binary_varchar(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb")


def _utc_datetime() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "idempotency_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", _binary_varchar(64), nullable=False),
        sa.Column("key", _binary_varchar(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("location", sa.String(255), nullable=True),
        sa.Column("etag", sa.String(64), nullable=True),
        sa.Column("expires_at", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_key")),
        sa.UniqueConstraint("owner", "key", name=op.f("uq_idempotency_key_owner_key")),
    )
    op.create_index(op.f("ix_idempotency_key_expires_at"), "idempotency_key", ["expires_at"])
    op.create_table(
        "login_failures",
        sa.Column("bucket", _binary_varchar(320), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_start", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", name=op.f("pk_login_failures")),
    )
    # Existing rows start at version 1. A NOT NULL column with a constant default is a plain
    # ALTER TABLE ADD COLUMN even on SQLite: no table copy.
    op.add_column("post", sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False))
    op.add_column("user", sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False))
    op.add_column(
        "user", sa.Column("token_version", sa.Integer(), server_default=sa.text("1"), nullable=False)
    )


def downgrade() -> None:
    # SQLite copies the table to drop a column (foreign keys off meanwhile, see env.py);
    # the copy must keep AUTOINCREMENT, or deleted ids would be handed out again.
    keep = {"sqlite_autoincrement": True}
    with op.batch_alter_table("user", table_kwargs=keep) as batch_op:
        batch_op.drop_column("token_version")
        batch_op.drop_column("version")
    with op.batch_alter_table("post", table_kwargs=keep) as batch_op:
        batch_op.drop_column("version")
    op.drop_table("login_failures")
    op.drop_table("idempotency_key")
