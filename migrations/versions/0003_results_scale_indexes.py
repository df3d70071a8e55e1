"""Indexes for a large results store: compare's filters, and the GEMM peaks per device.

Checked with EXPLAIN ANALYZE on a million results:
- `ix_results_spec_filters` (model_name, dataset, batch_size, dtype): `GET /api/v1/compare?model=&dataset=
  &batch_size=` found its candidate specs by reading every result; now by an index range.
- `ix_results_gemm_peaks` (kind, device_id, dtype): the efficiency column takes each compared device's best
  gemm result; without it SQLite read every result of those devices (`ix_results_device_id`) and
  PostgreSQL every gemm result of every device.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.create_index(
            "ix_results_spec_filters", ["model_name", "dataset", "batch_size", "dtype"], unique=False
        )
        batch_op.create_index("ix_results_gemm_peaks", ["kind", "device_id", "dtype"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_index("ix_results_gemm_peaks")
        batch_op.drop_index("ix_results_spec_filters")
