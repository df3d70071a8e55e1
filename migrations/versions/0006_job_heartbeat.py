"""`jobs.heartbeat_at`: the running job's heartbeat gets its own column, backfilled from `updated_at`.

The per-job heartbeat used to bump `updated_at`, which every other write of the row bumps too (a cancel
request, a publication, progress), so any write looked like a sign of life to the reconciler. The heartbeat
thread and the claim now write `heartbeat_at`, and the reconciler reads only that. Rows stored before take
their `updated_at` as their last heartbeat: for a job running at the upgrade that is what the reconciler
read until now, so it is judged exactly as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Adding a nullable column: no table copy, even in SQLite's batch mode.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs SET heartbeat_at = updated_at")


def downgrade() -> None:
    # Not in batch mode: on SQLite that copies `jobs` and drops the original, and with foreign keys on
    # (services.core.db) dropping it deletes every result and trial through ON DELETE CASCADE. SQLite >= 3.35
    # (which bpbench needs for RETURNING already) drops a column in place.
    op.drop_column("jobs", "heartbeat_at")
