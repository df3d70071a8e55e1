"""Results: built from the engine's result document, and the queries the API and the comparison use."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, selectinload

from engine.kinds import KINDS_BY_NAME
from engine.kinds.base import model_columns
from services.results.models import NO_DEVICE, Result, SpecDeviceStats, Trial

if TYPE_CHECKING:
    from services.jobs.models import Job


def _number(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN; the engine may report None for undefined values)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def headline(document: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """The median `samples_per_s` and its 95% CI (low, high) from an engine result document.

    The engine puts the robust summary of the trials under `statistics.samples_per_s` (`median`, `ci95`);
    a plain `metrics.samples_per_s` number is used when there is no summary (e.g. a single timed run).
    """
    statistics = document.get("statistics") or {}
    summary = statistics.get("samples_per_s") if isinstance(statistics, dict) else None
    if isinstance(summary, dict):
        ci = summary.get("ci95") or [None, None]
        return _number(summary.get("median")), _number(ci[0]), _number(ci[1])
    metrics = document.get("metrics") or {}
    return _number(metrics.get("samples_per_s")), None, None


THROUGHPUT_SERIES = "samples_per_s"


def trial_rows(document: dict[str, Any]) -> list[Trial]:
    """Trial rows from the engine's `trials`: a list (train: samples/s per window) or a dict of lists."""
    trials = document.get("trials") or []
    series: dict[str, list[Any]] = (
        {str(name): list(values or []) for name, values in trials.items()}
        if isinstance(trials, dict)
        else {THROUGHPUT_SERIES: list(trials)}
    )
    rows = []
    for name, values in series.items():
        for index, raw in enumerate(values):
            value = _number(raw)
            rows.append(
                Trial(
                    series=name[:64],
                    index=index,
                    value=value,
                    samples_per_s=value if name == THROUGHPUT_SERIES else None,
                )
            )
    return rows


def build_result(job: Job, document: dict[str, Any]) -> Result:
    """A Result (with its Trial rows) for `job` from the engine's document; not added to a session."""
    spec = job.spec or {}
    median, ci_low, ci_high = headline(document)
    metrics = document.get("metrics") or {}
    trials = trial_rows(document)
    # The kind says which of its figures are columns (gemm: the peak rate, no model or data set).
    kind = KINDS_BY_NAME.get(job.kind)
    columns = (kind.result_columns if kind is not None else model_columns)(spec, metrics)
    return Result(
        job_id=job.id,
        device_id=job.device_id,
        spec_hash=job.spec_hash,
        kind=job.kind,
        model_name=columns["model_name"],
        dataset=columns["dataset"],
        batch_size=columns["batch_size"],
        dtype=spec.get("dtype"),
        samples_per_s=median,
        samples_per_s_ci_low=ci_low,
        samples_per_s_ci_high=ci_high,
        peak_flops_per_s=_number(columns["peak_flops_per_s"]),
        trial_count=len(trials),  # every series
        engine_time_s=_number(document.get("engine_time_s")),
        metrics=metrics,
        statistics=document.get("statistics") or {},
        fingerprint=document.get("fingerprint") or {},
        trials=trials,
    )


def record_spec_device_stats(session: Session, result: Result) -> None:
    """Count a stored result in `spec_device_stats`, in the caller's transaction (after its flush).

    One upsert (`INSERT ... ON CONFLICT DO UPDATE`, the same syntax on PostgreSQL and SQLite): the row of
    the result's (spec, device) is created or gets one more result and, if this one is newer, its time.
    Concurrent writers of one pair serialise on that row's lock; a result without a figure is not counted.
    """
    if result.samples_per_s is None:
        return
    dialect = session.get_bind().dialect.name
    upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(SpecDeviceStats).values(
        spec_hash=result.spec_hash,
        device_id=result.device_id or NO_DEVICE,
        kind=result.kind,
        model_name=result.model_name,
        dataset=result.dataset,
        batch_size=result.batch_size,
        dtype=result.dtype,
        result_count=1,
        newest_at=result.created_at,
    )
    stored = SpecDeviceStats.__table__.c
    session.execute(
        upsert.on_conflict_do_update(
            index_elements=[stored.spec_hash, stored.device_id],
            set_={
                "result_count": stored.result_count + 1,
                # CASE, not GREATEST: PostgreSQL has GREATEST, SQLite a two-argument max().
                "newest_at": case(
                    (upsert.excluded.newest_at > stored.newest_at, upsert.excluded.newest_at),
                    else_=stored.newest_at,
                ),
            },
        )
    )


def refresh_spec_device_stats(session: Session, spec_hashes: Sequence[str] | None = None) -> None:
    """Rebuild the `spec_device_stats` rows of these specs (every spec if None) from `results`, in SQL.

    What a path that deletes results calls in its transaction (nothing in bpbench deletes results today;
    a job deleted by hand takes its result with it through the foreign key's ON DELETE CASCADE), and how
    benchmarks/gen_results.py fills the table after inserting results in bulk.
    """
    rows = select(
        Result.spec_hash,
        func.coalesce(Result.device_id, NO_DEVICE),
        func.max(Result.kind),
        func.max(Result.model_name),
        func.max(Result.dataset),
        func.max(Result.batch_size),
        func.max(Result.dtype),
        func.count(),
        func.max(Result.created_at),
    ).where(Result.samples_per_s.is_not(None))
    forget = delete(SpecDeviceStats)
    if spec_hashes is not None:
        rows = rows.where(Result.spec_hash.in_(list(spec_hashes)))
        forget = forget.where(SpecDeviceStats.spec_hash.in_(list(spec_hashes)))
    rows = rows.group_by(Result.spec_hash, Result.device_id)  # NULL is one group, stored as NO_DEVICE
    columns = ["spec_hash", "device_id", "kind", "model_name", "dataset", "batch_size", "dtype"]
    session.execute(forget)
    session.execute(insert(SpecDeviceStats).from_select([*columns, "result_count", "newest_at"], rows))


def get_result_for_job(session: Session, job_id: str, *, with_trials: bool = False) -> Result | None:
    """The result of a job, or None if it has none (yet)."""
    query = select(Result).where(Result.job_id == job_id)
    if with_trials:
        query = query.options(selectinload(Result.trials))
    return session.scalars(query).one_or_none()


def list_results(
    session: Session,
    *,
    kind: str | None = None,
    model_name: str | None = None,
    dataset: str | None = None,
    batch_size: int | None = None,
    dtype: str | None = None,
    spec_hash: str | None = None,
    device_ids: Sequence[str] | None = None,
    limit: int | None = 100,
    offset: int = 0,
) -> list[Result]:
    """Results, newest first, filtered on the denormalised comparison columns."""
    query = select(Result)
    filters = {
        Result.kind: kind,
        Result.model_name: model_name,
        Result.dataset: dataset,
        Result.batch_size: batch_size,
        Result.dtype: dtype,
        Result.spec_hash: spec_hash,
    }
    for column, value in filters.items():
        if value is not None:
            query = query.where(column == value)
    if device_ids is not None:
        query = query.where(Result.device_id.in_(list(device_ids)))
    query = query.order_by(Result.created_at.desc(), Result.id.desc()).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def count_results(
    session: Session, *, device_ids: Sequence[str] | None, cap: int | None = None, **columns: Any
) -> int:
    """How many results match the same filters as `list_results`, counted by the database.

    With `cap`, at most `cap` + 1 rows are read (a million results cost what ten thousand do).
    """
    query = select(Result.id)
    for name, value in columns.items():
        if value is not None:
            query = query.where(getattr(Result, name) == value)
    if device_ids is not None:
        query = query.where(Result.device_id.in_(list(device_ids)))
    if cap is not None:
        query = query.limit(cap + 1)
    return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)


def trial_series(session: Session, result_id: int) -> dict[str, list[float | None]]:
    """The trials of a result grouped by series (`samples_per_s`, `loss`, ...), each in trial order."""
    series: dict[str, list[float | None]] = {}
    for name, value in session.execute(
        select(Trial.series, Trial.value)
        .where(Trial.result_id == result_id)
        .order_by(Trial.series, Trial.index)
    ):
        series.setdefault(name, []).append(value)
    return series
