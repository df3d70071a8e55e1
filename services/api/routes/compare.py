"""`/api/v1/compare`: devices side by side on one spec, with the seed's vendor timeline.

The aggregation lives in `services/results/compare.py`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.api.deps import ReadAccess, SessionDep
from services.jobs.spec import MAX_BATCH, DatasetName, DType, JobKind, ModelName
from services.results.compare import CompareFilters, compare

router = APIRouter(prefix="/compare", tags=["compare"])


@router.get(
    "",
    dependencies=[ReadAccess],
    responses={
        404: {"description": "no result matches"},
        422: {"description": "a filter or the baseline is invalid"},
    },
)
def compare_devices(
    session: SessionDep,
    kind: JobKind | None = None,
    model: ModelName | None = None,
    dataset: DatasetName | None = None,
    batch_size: Annotated[int | None, Query(ge=1, le=MAX_BATCH)] = None,
    dtype: DType | None = None,
    spec_hash: Annotated[str | None, Query(min_length=16, max_length=16, pattern="^[0-9a-f]{16}$")] = None,
    baseline: Annotated[
        str | None, Query(max_length=200, description="device id or name; default the slowest")
    ] = None,
) -> dict[str, Any]:
    """One row per device for ONE spec: median samples/s with CI and runs, ratio, efficiency, vendor timeline.

    When the filters match several specs, the one with the most results is compared; `candidates` lists them
    all and `note` says so (ask again with `spec_hash=` for another).
    """
    # No match (NoResults) answers 404 and an unknown baseline 422: `install_domain_error_handlers`.
    filters = CompareFilters(kind, model, dataset, batch_size, dtype, spec_hash)
    return compare(session, filters, baseline)
