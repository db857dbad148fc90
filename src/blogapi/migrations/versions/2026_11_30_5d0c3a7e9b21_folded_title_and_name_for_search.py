"""folded title and name for search

`?q=` matched with each database's own case rules: SQLite's `lower()` is ASCII-only and
MariaDB's collation ignores accents. The folded copies make one rule (db.fold_for_search).

Revision ID: 5d0c3a7e9b21
Revises: 5b0d7e3a91c4
Create Date: 2026-11-30 23:10:00
"""

import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "5d0c3a7e9b21"
down_revision: str | None = "5b0d7e3a91c4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TITLE_MAX, NAME_MAX, FOLD_GROWTH = 200, 100, 3
BATCH = 2000


def _fold(text: str) -> str:
    # db.fold_for_search as of this revision: a later change of the rule refolds in its own migration.
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).casefold())


def _binary_varchar(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb")


def _add_folded_copy(table_name: str, source: str, length: int) -> None:
    target = f"{source}_folded"
    op.add_column(table_name, sa.Column(target, _binary_varchar(length), nullable=True))
    table = sa.table(table_name, sa.column("id", sa.Integer), sa.column(source), sa.column(target))
    fill = (
        sa.update(table).where(table.c.id == sa.bindparam("row_id")).values({target: sa.bindparam("folded")})
    )
    connection = op.get_bind()
    last_id = 0
    while True:  # in keyset batches: a million rows never sit in memory at once
        rows = connection.execute(
            sa.select(table.c.id, table.c[source])
            .where(table.c.id > last_id)
            .order_by(table.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        connection.execute(fill, [{"row_id": row_id, "folded": _fold(text)} for row_id, text in rows])
        last_id = rows[-1][0]
    # SQLite copies the table to make the column NOT NULL; the copy keeps AUTOINCREMENT.
    with op.batch_alter_table(table_name, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.alter_column(target, existing_type=_binary_varchar(length), nullable=False)


def upgrade() -> None:
    _add_folded_copy("post", "title", FOLD_GROWTH * TITLE_MAX)
    _add_folded_copy("user", "name", FOLD_GROWTH * NAME_MAX)


def downgrade() -> None:
    keep = {"sqlite_autoincrement": True}
    with op.batch_alter_table("user", table_kwargs=keep) as batch_op:
        batch_op.drop_column("name_folded")
    with op.batch_alter_table("post", table_kwargs=keep) as batch_op:
        batch_op.drop_column("title_folded")
