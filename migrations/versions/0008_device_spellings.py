"""`jobs.device` and `workers.device` hold every spelling of the device grammar: 40 characters, not 16.

The backend registry's spellings are longer than `gpu:N`: `oneapi:level_zero:gpu:0` is 23 characters
(`engine.grammar.MAX_DEVICE_CHARS` is the bound, and the width here). On SQLite the two tables are copied in
batch mode, with foreign keys deferred and checked afterwards (`services.core.migrate`), so the results and
trials that reference the jobs stay. A downgrade refuses while a row holds a longer spelling, naming how
many, rather than cut a device's name short.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE, AFTER = 16, 40
TABLES = ("jobs", "workers")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(
                "device", existing_type=sa.String(BEFORE), type_=sa.String(AFTER), existing_nullable=False
            )


def downgrade() -> None:
    connection = op.get_bind()
    for table in TABLES:
        longer = connection.scalar(sa.text(f"SELECT count(*) FROM {table} WHERE length(device) > {BEFORE}"))
        if longer:
            raise RuntimeError(
                f"{longer} row(s) of {table} name a device longer than {BEFORE} characters (a registered "
                f"backend's spelling); delete them before downgrading below 0008"
            )
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(
                "device", existing_type=sa.String(AFTER), type_=sa.String(BEFORE), existing_nullable=False
            )
