"""normalized emails and prunable throttle rows

Revision ID: 5b0d7e3a91c4
Revises: e85857054783
Create Date: 2026-11-30 22:30:00

Emails were lower-cased but not NFC-normalised when stored: a row whose stored form is not
what `normalize_email` makes of it is rewritten (unless another row already holds that
form: that account keeps its old form and the migration says so). The function is copied
here, as it is today, so that this migration keeps doing the same thing.
"""

import logging
import unicodedata
from collections.abc import Sequence
from typing import Annotated

import sqlalchemy as sa
from alembic import op
from pydantic import StringConstraints, TypeAdapter

revision: str = "5b0d7e3a91c4"
down_revision: str | None = "e85857054783"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger("alembic.runtime.migration")

_lowercase = TypeAdapter(Annotated[str, StringConstraints(to_lower=True)]).validate_python
_user = sa.table("user", sa.column("id", sa.Integer()), sa.column("email", sa.String()))
BATCH = 1000


def _normalize_email(email: str) -> str:
    return unicodedata.normalize("NFC", _lowercase(unicodedata.normalize("NFC", email)))


def upgrade() -> None:
    op.create_index(op.f("ix_login_failures_window_start"), "login_failures", ["window_start"])
    connection = op.get_bind()
    after = 0
    while True:
        rows = connection.execute(
            sa.select(_user.c.id, _user.c.email).where(_user.c.id > after).order_by(_user.c.id).limit(BATCH)
        ).all()
        if not rows:
            break
        for user_id, email in rows:
            normalized = _normalize_email(email)
            if normalized == email:
                continue
            if connection.scalar(sa.select(_user.c.id).where(_user.c.email == normalized)) is not None:
                logger.warning(
                    "user %s keeps its email: its normalised form belongs to another user", user_id
                )
                continue
            connection.execute(sa.update(_user).where(_user.c.id == user_id).values(email=normalized))
        after = rows[-1].id


def downgrade() -> None:
    # The old forms are not kept: normalised emails stay (they were valid before as well).
    op.drop_index(op.f("ix_login_failures_window_start"), table_name="login_failures")
