"""`spec_device_stats` (throughput results per spec and device) and `results.peak_flops_per_s`, backfilled.

Why (a million results):
- `GET /api/v1/compare` with no filter chose the spec to compare by a GROUP BY over every throughput
  result. `spec_device_stats` holds one row per (spec, device): the count and the newest `created_at`, and
  the spec's filter columns. `complete_job` keeps it in step (an upsert in the result's transaction).
- The efficiency column took each device's best gemm run by parsing `metrics` (JSON) of every gemm result
  of the compared devices. `results.peak_flops_per_s` holds the figure as a column, and
  `ix_results_gemm_peaks` ends with it, so the best run of a (device, dtype) is one index probe.

Both are backfilled from the rows already stored, in SQL (one INSERT ... SELECT, one UPDATE of the gemm
results). The JSON value is copied only when it is a number, as `build_result` does.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NO_DEVICE = ""  # services.results.models.NO_DEVICE, as of this revision

BACKFILL_STATS = f"""
INSERT INTO spec_device_stats (spec_hash, device_id, kind, model_name, dataset, batch_size, dtype,
                               result_count, newest_at)
SELECT spec_hash, COALESCE(device_id, '{NO_DEVICE}'), MAX(kind), MAX(model_name), MAX(dataset),
       MAX(batch_size), MAX(dtype), COUNT(*), MAX(created_at)
FROM results
WHERE samples_per_s IS NOT NULL
GROUP BY spec_hash, device_id
"""

BACKFILL_PEAKS = {
    "postgresql": """
        UPDATE results SET peak_flops_per_s = CAST(metrics ->> 'peak_flops_per_s' AS DOUBLE PRECISION)
        WHERE kind = 'gemm' AND json_typeof(metrics -> 'peak_flops_per_s') = 'number'
    """,
    "sqlite": """
        UPDATE results SET peak_flops_per_s = json_extract(metrics, '$.peak_flops_per_s')
        WHERE kind = 'gemm' AND json_type(metrics, '$.peak_flops_per_s') IN ('integer', 'real')
    """,
}


def upgrade() -> None:
    op.create_table(
        "spec_device_stats",
        sa.Column("spec_hash", sa.String(length=16), nullable=False),
        sa.Column("device_id", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=True),
        sa.Column("dataset", sa.String(length=32), nullable=True),
        sa.Column("batch_size", sa.Integer(), nullable=True),
        sa.Column("dtype", sa.String(length=16), nullable=True),
        sa.Column("result_count", sa.Integer(), nullable=False),
        sa.Column("newest_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("spec_hash", "device_id", name=op.f("pk_spec_device_stats")),
    )
    with op.batch_alter_table("spec_device_stats", schema=None) as batch_op:
        batch_op.create_index(
            "ix_spec_device_stats_filters", ["model_name", "dataset", "batch_size", "dtype"], unique=False
        )
    # Adding a nullable column and replacing an index: no table copy, even in SQLite's batch mode.
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("peak_flops_per_s", sa.Float(), nullable=True))
        batch_op.drop_index("ix_results_gemm_peaks")
        batch_op.create_index(
            "ix_results_gemm_peaks", ["kind", "device_id", "dtype", "peak_flops_per_s"], unique=False
        )

    dialect = op.get_context().dialect.name
    if dialect not in BACKFILL_PEAKS:
        raise NotImplementedError(f"no backfill of results.peak_flops_per_s for {dialect!r}")
    op.execute(BACKFILL_PEAKS[dialect])
    op.execute(BACKFILL_STATS)


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_index("ix_results_gemm_peaks")
        batch_op.create_index("ix_results_gemm_peaks", ["kind", "device_id", "dtype"], unique=False)
    # Not in batch mode: on SQLite that copies `results` and drops the original, and with foreign keys on
    # (services.core.db) dropping it deletes every trial through ON DELETE CASCADE. SQLite >= 3.35 (which
    # bpbench needs for RETURNING already) drops a column in place.
    op.drop_column("results", "peak_flops_per_s")
    with op.batch_alter_table("spec_device_stats", schema=None) as batch_op:
        batch_op.drop_index("ix_spec_device_stats_filters")

    op.drop_table("spec_device_stats")
