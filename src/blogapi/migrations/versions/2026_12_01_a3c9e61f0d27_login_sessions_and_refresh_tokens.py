"""login sessions and refresh tokens, and disabled accounts

A login now starts a session (a row: who, when, from where, last used, expiry, revocation),
and hands out a refresh token, stored as its SHA-256 only. Access tokens name their session
(`sid`) instead of the user's token_version, which nothing reads any more (left in place:
dropping it would rebuild the user table on SQLite). Tokens issued before this revision
carry no `sid` and are refused (401): everyone logs in again once. `user.is_active` (true for every existing
account) lets an admin disable an account.

Revision ID: a3c9e61f0d27
Revises: 3f9a1c7d2e64
Create Date: 2026-12-01 01:50:00
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "a3c9e61f0d27"
down_revision: str | None = "3f9a1c7d2e64"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc_datetime() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _binary_string(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "session",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", _utc_datetime(), nullable=False),
        sa.Column("last_used_at", _utc_datetime(), nullable=False),
        sa.Column("expires_at", _utc_datetime(), nullable=False),
        sa.Column("revoked_at", _utc_datetime(), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("user_agent", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user.id"], name=op.f("fk_session_user_id_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_session_user_id_id", "session", ["user_id", "id"])
    op.create_index(op.f("ix_session_expires_at"), "session", ["expires_at"])
    op.create_table(
        "refresh_token",
        sa.Column("token_hash", _binary_string(64), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("created_at", _utc_datetime(), nullable=False),
        sa.Column("rotated_at", _utc_datetime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["session.id"],
            name=op.f("fk_refresh_token_session_id_session"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_refresh_token")),
    )
    op.create_index(op.f("ix_refresh_token_session_id"), "refresh_token", ["session_id"])
    # A NOT NULL column with a constant default is a plain ADD COLUMN, even on SQLite.
    op.add_column("user", sa.Column("is_active", sa.Boolean(), server_default="1", nullable=False))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite's own DROP COLUMN (3.35+), not a batch copy of the table: the copy would
        # lose the triggers that keep the user search index (3f9a1c7d2e64).
        op.execute('ALTER TABLE "user" DROP COLUMN is_active')
    else:
        op.drop_column("user", "is_active")
    # Their indexes go with them (MariaDB refuses to drop one a foreign key needs on its own).
    op.drop_table("refresh_token")
    op.drop_table("session")
