"""Results of succeeded jobs (at most one per job), their raw timing trials, and a per-spec summary.

The full engine document is kept (`metrics`, `statistics`); the fields the comparison filters and sorts
on are copied into columns (spec hash, kind, model, dataset, batch size, dtype, device, the median
`samples_per_s` and its confidence interval, a gemm run's peak FLOP/s), so comparing devices is one
indexed query. `SpecDeviceStats` counts the throughput results per (spec, device), so choosing which
spec to compare reads specs x devices rows instead of every result.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from services.core.db import Base, utcnow
from services.jobs import models as _jobs  # noqa: F401  (the tables the foreign keys point to)


class Result(Base):
    """The outcome of one succeeded job; `job_id` is unique, so a job has at most one result."""

    __tablename__ = "results"
    __table_args__ = (
        UniqueConstraint("job_id", name="uq_results_job_id"),
        Index("ix_results_compare", "spec_hash", "device_id"),
        # Compare's filters, and each device's best gemm result, by index at a million results.
        Index("ix_results_spec_filters", "model_name", "dataset", "batch_size", "dtype"),
        # The peak last: each device's best gemm run of a dtype is one backward index probe.
        Index("ix_results_gemm_peaks", "kind", "device_id", "dtype", "peak_flops_per_s"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"))
    device_id: Mapped[str | None] = mapped_column(String(16), ForeignKey("devices.id"), index=True)
    spec_hash: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32), index=True)
    model_name: Mapped[str | None] = mapped_column(String(64))
    dataset: Mapped[str | None] = mapped_column(String(32))
    batch_size: Mapped[int | None] = mapped_column(Integer)
    dtype: Mapped[str | None] = mapped_column(String(16))
    samples_per_s: Mapped[float | None] = mapped_column(Float, doc="median over the trials")
    samples_per_s_ci_low: Mapped[float | None] = mapped_column(Float, doc="95% CI of the median, low end")
    samples_per_s_ci_high: Mapped[float | None] = mapped_column(Float, doc="95% CI of the median, high end")
    peak_flops_per_s: Mapped[float | None] = mapped_column(
        Float, doc="gemm: the best FLOP/s of the run (the engine's `metrics.peak_flops_per_s`)"
    )
    trial_count: Mapped[int] = mapped_column(Integer, default=0)
    engine_time_s: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(doc="the engine's `metrics` document")
    statistics: Mapped[dict[str, Any]] = mapped_column(doc="the engine's `statistics` document")
    fingerprint: Mapped[dict[str, Any]] = mapped_column(doc="the engine's fingerprint of the run")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    trials: Mapped[list[Trial]] = relationship(
        back_populates="result", cascade="all, delete-orphan", order_by="Trial.index"
    )

    def __repr__(self) -> str:
        return f"Result(job_id={self.job_id!r}, kind={self.kind!r}, samples_per_s={self.samples_per_s!r})"


class Trial(Base):
    """One raw timing sample of a result, in the engine's order within its series.

    A train job has one series, `samples_per_s` (one value per timed window; copied into the
    `samples_per_s` column that comparisons pool). Other kinds report several series, named as the engine
    names them: gemm `"1024"` (FLOP/s per trial at that size), backprop_vs_numerical `"width_8/backprop_s"`.
    """

    __tablename__ = "trials"
    __table_args__ = (
        UniqueConstraint("result_id", "series", "index", name="uq_trials_result_id_series_index"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(Integer, ForeignKey("results.id", ondelete="CASCADE"), index=True)
    series: Mapped[str] = mapped_column(String(64), doc="samples_per_s, or the engine's key of the series")
    index: Mapped[int] = mapped_column(Integer, doc="position in the series, from 0")
    value: Mapped[float | None] = mapped_column(Float)
    samples_per_s: Mapped[float | None] = mapped_column(Float, doc="the value, for the samples_per_s series")

    result: Mapped[Result] = relationship(back_populates="trials")


NO_DEVICE = ""  # `SpecDeviceStats.device_id` of results stored without a device (a key column has no NULL)


class SpecDeviceStats(Base):
    """Per (spec, device): how many throughput results `results` holds and when the newest was stored.

    Kept in step with `results` in the transaction that stores a result (`record_spec_device_stats`, an
    upsert) and rebuilt from it by `refresh_spec_device_stats` after results are deleted. Only results with
    a `samples_per_s` figure count: they are what `compare` chooses a spec among.
    The filter columns are the spec's (one spec hash, one kind, model, dataset, batch size and dtype).
    """

    __tablename__ = "spec_device_stats"
    __table_args__ = (Index("ix_spec_device_stats_filters", "model_name", "dataset", "batch_size", "dtype"),)

    spec_hash: Mapped[str] = mapped_column(String(16), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(16), primary_key=True, doc="NO_DEVICE when none")
    kind: Mapped[str] = mapped_column(String(32))
    model_name: Mapped[str | None] = mapped_column(String(64))
    dataset: Mapped[str | None] = mapped_column(String(32))
    batch_size: Mapped[int | None] = mapped_column(Integer)
    dtype: Mapped[str | None] = mapped_column(String(16))
    result_count: Mapped[int] = mapped_column(Integer)
    newest_at: Mapped[datetime] = mapped_column(doc="the newest result's created_at")

    def __repr__(self) -> str:
        return (
            f"SpecDeviceStats(spec_hash={self.spec_hash!r}, device_id={self.device_id!r}, "
            f"result_count={self.result_count!r})"
        )


class HistoryMark(Base):
    """An expected shift marked by a person (a new driver, a BIOS change): histories restart there."""

    __tablename__ = "history_marks"
    __table_args__ = (Index("ix_history_marks_device_at", "device_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(16), ForeignKey("devices.id", ondelete="CASCADE"))
    spec_hash: Mapped[str | None] = mapped_column(String(16), doc="one spec, or every spec when None")
    at: Mapped[datetime] = mapped_column(doc="results from this time on start a new stretch")
    note: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
