"""mail tokens (password reset, email verification) and verified emails

`mail_token` holds the SHA-256 of each token sent by mail (reset, verify, change), single
use. `user.email_verified` is false for every existing account: nobody proved their address
yet, and saying otherwise would be a lie the REQUIRE_VERIFIED_EMAIL check then trusts. An
existing user gets a token with `POST /auth/verify/resend` (or by resetting their password).

Revision ID: c41e7a9d5b20
Revises: a3c9e61f0d27
Create Date: 2026-12-01 06:00:00
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "c41e7a9d5b20"
down_revision: str | None = "a3c9e61f0d27"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc_datetime() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _binary_string(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "mail_token",
        sa.Column("token_hash", _binary_string(64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("email", _binary_string(254), nullable=False),
        sa.Column("created_at", _utc_datetime(), nullable=False),
        sa.Column("expires_at", _utc_datetime(), nullable=False),
        sa.Column("used_at", _utc_datetime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user.id"], name=op.f("fk_mail_token_user_id_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_mail_token")),
    )
    op.create_index(op.f("ix_mail_token_user_id"), "mail_token", ["user_id"])
    op.create_index(op.f("ix_mail_token_expires_at"), "mail_token", ["expires_at"])
    # A NOT NULL column with a constant default is a plain ADD COLUMN, even on SQLite.
    op.add_column("user", sa.Column("email_verified", sa.Boolean(), server_default="0", nullable=False))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite's own DROP COLUMN, not a batch copy: the copy would lose the user search
        # index's triggers (3f9a1c7d2e64).
        op.execute('ALTER TABLE "user" DROP COLUMN email_verified')
    else:
        op.drop_column("user", "email_verified")
    # Its indexes go with it (MariaDB refuses to drop one a foreign key needs on its own).
    op.drop_table("mail_token")
