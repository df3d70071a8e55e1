"""Seed the vendor timeline and the milestones from the seed document (shared/seed/000_5542642e4953c5ff.txt).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.timeline.data import SEED_SOURCE, milestone_rows, vendor_rows

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Lightweight table descriptions: a data migration must not depend on today's ORM models.
timeline_vendors = sa.table(
    "timeline_vendors",
    sa.column("position", sa.Integer),
    sa.column("vendor", sa.String),
    sa.column("vendor_zh", sa.String),
    sa.column("platform", sa.String),
    sa.column("platform_zh", sa.String),
    sa.column("platform_year", sa.Integer),
    sa.column("entered_from", sa.Integer),
    sa.column("entered_to", sa.Integer),
    sa.column("entered", sa.String),
    sa.column("entered_zh", sa.String),
    sa.column("note", sa.Text),
    sa.column("note_zh", sa.Text),
    sa.column("source", sa.String),
)
timeline_milestones = sa.table(
    "timeline_milestones",
    sa.column("position", sa.Integer),
    sa.column("year", sa.Integer),
    sa.column("event", sa.Text),
    sa.column("event_zh", sa.Text),
    sa.column("note", sa.Text),
    sa.column("note_zh", sa.Text),
    sa.column("source", sa.String),
)


def upgrade() -> None:
    op.bulk_insert(timeline_vendors, vendor_rows())
    op.bulk_insert(timeline_milestones, milestone_rows())


def downgrade() -> None:
    op.execute(timeline_milestones.delete().where(timeline_milestones.c.source == SEED_SOURCE))
    op.execute(timeline_vendors.delete().where(timeline_vendors.c.source == SEED_SOURCE))
