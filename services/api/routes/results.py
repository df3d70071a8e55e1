"""`/api/v1/results`: recorded results, filtered and paged, as JSON or (`?format=csv`) a CSV download."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from services.api.deps import MAX_OFFSET, TOTAL_CAP, ReadAccess, SessionDep
from services.devices.service import devices_by_id
from services.jobs.service import specs_by_job_id
from services.jobs.spec import MAX_BATCH, DatasetName, DType, JobKind, ModelName
from services.results.filters import ResultFilter
from services.results.models import Result
from services.results.service import count_results, list_results

router = APIRouter(prefix="/results", tags=["results"])

CSV_COLUMNS = (
    "id",
    "job_id",
    "created_at",
    "device_id",
    "device_name",
    "device_class",
    "vendor",
    "kind",
    "model",
    "dataset",
    "batch_size",
    "layers",
    "steps",
    "dtype",
    "spec_hash",
    "samples_per_s",
    "samples_per_s_ci95_low",
    "samples_per_s_ci95_high",
    "trial_count",
    "engine_time_s",
    "test_accuracy",
    "flops_per_s",
    "peak_flops_per_s",
    "max_relative_error",
    "samples_per_j",
    "mean_power_w",
    "energy_note",
    "load_max",
    "dropped_windows",
)


class ResultOut(BaseModel):
    """A recorded result: the comparison columns and the engine's metrics and statistics."""

    id: int
    job_id: str
    created_at: datetime
    device_id: str | None
    device_name: str | None
    device_class: str | None
    vendor: str | None
    kind: str
    model: str | None
    dataset: str | None
    batch_size: int | None
    layers: list[int] | None = Field(description="the model's layer widths, input first (train kinds)")
    steps: int | None = Field(description="training steps of the job (train kind)")
    dtype: str | None
    spec_hash: str
    samples_per_s: float | None
    samples_per_s_ci95_low: float | None
    samples_per_s_ci95_high: float | None
    trial_count: int
    engine_time_s: float | None
    metrics: dict[str, Any]
    statistics: dict[str, Any]


class ResultPage(BaseModel):
    """One page of results, newest first."""

    total: int = Field(description=f"results matching the filters, counted exactly up to {TOTAL_CAP:,}")
    total_exact: bool = Field(
        True, description=f"false when more than {TOTAL_CAP:,} results match: `total` is then {TOTAL_CAP:,}"
    )
    limit: int
    offset: int
    items: list[ResultOut]


def _views(session: Session, results: list[Result]) -> list[ResultOut]:
    devices = devices_by_id(session, {r.device_id for r in results if r.device_id})
    specs = specs_by_job_id(session, {r.job_id for r in results})
    views = []
    for r in results:
        device = devices.get(r.device_id or "")
        spec = specs.get(r.job_id, {})
        views.append(
            ResultOut(
                id=r.id,
                job_id=r.job_id,
                created_at=r.created_at,
                device_id=r.device_id,
                device_name=device.name if device else None,
                device_class=device.device_class if device else None,
                vendor=device.vendor if device else None,
                kind=r.kind,
                model=r.model_name,
                dataset=r.dataset,
                batch_size=r.batch_size,
                layers=_layers(spec),
                steps=spec.get("steps") if r.kind == "train" else None,
                dtype=r.dtype,
                spec_hash=r.spec_hash,
                samples_per_s=r.samples_per_s,
                samples_per_s_ci95_low=r.samples_per_s_ci_low,
                samples_per_s_ci95_high=r.samples_per_s_ci_high,
                trial_count=r.trial_count,
                engine_time_s=r.engine_time_s,
                metrics=r.metrics,
                statistics=r.statistics,
            )
        )
    return views


def _layers(spec: dict[str, Any]) -> list[int] | None:
    layers = (spec.get("model") or {}).get("layers")
    return [int(width) for width in layers] if isinstance(layers, list) else None


# A spreadsheet reads a cell starting with one of these as a formula (or, for tab and CR, strips them and
# then does): text cells get a leading apostrophe so they open as text. Numbers stay numbers.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        value = "-".join(map(str, value))  # layer widths as the textbook writes them: 784-50-10
    elif isinstance(value, dict | list):
        value = json.dumps(value)
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def to_csv(views: list[ResultOut]) -> str:
    """The results as CSV with a header row (`CSV_COLUMNS`); headline metrics get their own columns."""
    buffer = io.StringIO()
    # CRLF rows (RFC 4180): the writer then quotes a cell holding a bare CR, which would end the row.
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for view in views:
        doc = view.model_dump(mode="json")
        metrics = view.metrics
        extra = {
            key: metrics.get(key)
            for key in ("test_accuracy", "flops_per_s", "peak_flops_per_s", "max_relative_error")
        }
        energy, conditions = metrics.get("energy") or {}, metrics.get("conditions") or {}
        extra.update(
            samples_per_j=energy.get("samples_per_j"),
            mean_power_w=energy.get("mean_power_w"),
            energy_note=energy.get("reason"),
            load_max=conditions.get("load_max"),
            dropped_windows=conditions.get("dropped_windows"),
        )
        writer.writerow([_csv_cell(extra[c] if c in extra else doc.get(c)) for c in CSV_COLUMNS])
    return buffer.getvalue()


@router.get(
    "",
    response_model=ResultPage,
    dependencies=[ReadAccess],
    responses={200: {"content": {"text/csv": {}}, "description": "JSON page, or CSV with format=csv"}},
)
def get_results(
    session: SessionDep,
    kind: JobKind | None = None,
    model: ModelName | None = None,
    dataset: DatasetName | None = None,
    batch_size: Annotated[int | None, Query(ge=1, le=MAX_BATCH)] = None,
    dtype: DType | None = None,
    spec_hash: Annotated[str | None, Query(max_length=16)] = None,
    device: Annotated[str | None, Query(max_length=16, description="device id")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    format: Literal["json", "csv"] = "json",
) -> Any:
    """Results, newest first; `format=csv` returns a CSV download of the same page."""
    result_filter = ResultFilter(
        kind=kind,
        model=model,
        dataset=dataset,
        batch_size=batch_size,
        dtype=dtype,
        spec_hash=spec_hash,
        device_ids=(device,) if device else None,
    )
    views = _views(session, list_results(session, result_filter, limit=limit, offset=offset))
    if format == "csv":
        return Response(
            to_csv(views),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="bpbench-results.csv"'},
        )
    total = count_results(session, result_filter, cap=TOTAL_CAP)
    return ResultPage(
        total=min(total, TOTAL_CAP), total_exact=total <= TOTAL_CAP, limit=limit, offset=offset, items=views
    )
