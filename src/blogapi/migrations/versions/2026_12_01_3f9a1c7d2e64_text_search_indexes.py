"""text search indexes

`?q=` read every title (or name) with `LIKE '%term%'`. Each backend now has a text index
over the folded columns (blogapi/search.py): PostgreSQL a pg_trgm GIN index, SQLite an
FTS5 trigram table kept by triggers, MariaDB a side table of (trigram, id) that the
service writes. Existing rows are indexed here, in batches.

SQLite: a later migration that copies `post` or `user` (batch mode) drops their triggers
with the old table, and must create them again (`_create_fts_triggers`).

Revision ID: 3f9a1c7d2e64
Revises: b7e4d2a91c3f
Create Date: 2026-12-01 02:00:00
"""

from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "3f9a1c7d2e64"
down_revision: str | None = "b7e4d2a91c3f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 2000
# (table, folded column, SQLite FTS5 table, MariaDB side table, its id column, PostgreSQL index)
SEARCHED = (
    ("post", "title_folded", "post_title_fts", "post_title_trigram", "post_id", "ix_post_title_folded_trgm"),
    ("user", "name_folded", "user_name_fts", "user_name_trigram", "user_id", "ix_user_name_folded_trgm"),
)


def _trigrams(folded: str) -> list[str]:
    # search.trigrams as of this revision: the trigrams of each run of 3+ letters and digits.
    runs, run = [], []
    for character in [*folded, " "]:
        if character.isalnum():
            run.append(character)
            continue
        if len(run) >= 3:
            runs.append("".join(run))
        run = []
    return list(dict.fromkeys(run[start : start + 3] for run in runs for start in range(len(run) - 2)))


def _batches(connection: sa.Connection, table_name: str, column: str) -> Iterable[list[tuple[int, str]]]:
    """The rows' (id, folded text), in keyset batches: a million rows never sit in memory."""
    table = sa.table(table_name, sa.column("id", sa.Integer), sa.column(column, sa.String))
    last_id = 0
    while True:
        rows = connection.execute(
            sa.select(table.c.id, table.c[column])
            .where(table.c.id > last_id)
            .order_by(table.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        yield [(row[0], row[1]) for row in rows]
        last_id = rows[-1][0]


def _create_fts_triggers(table: str, column: str, fts: str) -> None:
    # Names from SEARCHED, never from input.
    delete_old = f"INSERT INTO {fts}({fts}, rowid, {column}) VALUES ('delete', old.id, old.{column});"  # noqa: S608
    insert_new = f"INSERT INTO {fts}(rowid, {column}) VALUES (new.id, new.{column});"  # noqa: S608
    op.execute(f'CREATE TRIGGER {fts}_after_insert AFTER INSERT ON "{table}" BEGIN {insert_new} END')
    op.execute(f'CREATE TRIGGER {fts}_after_delete AFTER DELETE ON "{table}" BEGIN {delete_old} END')
    op.execute(
        f'CREATE TRIGGER {fts}_after_update AFTER UPDATE OF {column} ON "{table}"'
        f" BEGIN {delete_old} {insert_new} END"
    )


def upgrade() -> None:
    connection = op.get_bind()
    dialect = connection.dialect.name
    if dialect == "postgresql":
        # A trusted extension: the database's owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for table, column, _, _, _, index in SEARCHED:
            op.create_index(
                index, table, [column], postgresql_using="gin", postgresql_ops={column: "gin_trgm_ops"}
            )
    elif dialect == "sqlite":
        for table, column, fts, _, _, _ in SEARCHED:
            # External content: the index only; the text stays in the table. Case-sensitive,
            # since the column is folded already (the trigram tokenizer folds ASCII only).
            op.execute(
                f"CREATE VIRTUAL TABLE {fts} USING fts5({column}, content='{table}', content_rowid='id',"
                " tokenize='trigram case_sensitive 1')"
            )
            _create_fts_triggers(table, column, fts)
            fill_fts = sa.text(f"INSERT INTO {fts}(rowid, {column}) VALUES (:id, :text)")  # noqa: S608
            for rows in _batches(connection, table, column):
                connection.execute(fill_fts, [{"id": row_id, "text": text} for row_id, text in rows])
    else:
        for table, _, _, side_table, id_column, _ in SEARCHED:
            op.create_table(
                side_table,
                sa.Column("trigram", mysql.VARCHAR(3, collation="utf8mb4_bin"), nullable=False),
                sa.Column(id_column, sa.Integer(), nullable=False),
                sa.ForeignKeyConstraint(
                    [id_column],
                    [f"{table}.id"],
                    name=f"fk_{side_table}_{id_column}_{table}",
                    ondelete="CASCADE",
                ),
                sa.PrimaryKeyConstraint("trigram", id_column, name=f"pk_{side_table}"),
            )
        # Each batch commits on its own: a million posts' trigrams are not one transaction.
        with op.get_context().autocommit_block():
            for table, column, _, side_table, id_column, _ in SEARCHED:
                fill = sa.table(side_table, sa.column("trigram"), sa.column(id_column)).insert()
                for rows in _batches(connection, table, column):
                    entries = [
                        {"trigram": trigram, id_column: row_id}
                        for row_id, text in rows
                        for trigram in _trigrams(text)
                    ]
                    if entries:
                        connection.execute(fill, entries)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table, _, fts, side_table, _, index in SEARCHED:
        if dialect == "postgresql":
            # pg_trgm stays: it may have been there before, and other objects may use it.
            op.drop_index(index, table_name=table)
        elif dialect == "sqlite":
            for event in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER {fts}_after_{event}")
            op.execute(f"DROP TABLE {fts}")
        else:
            op.drop_table(side_table)
