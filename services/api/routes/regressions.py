"""`/api/v1/regressions`: results outside the noise of their (device, spec) history (see
`services/results/regressions.py` for the rule)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from services.api.deps import ReadAccess, SessionDep
from services.jobs.spec import JobKind
from services.results import regressions

router = APIRouter(prefix="/regressions", tags=["regressions"])


@router.get("", dependencies=[ReadAccess])
def get_regressions(
    session: SessionDep,
    device: Annotated[str | None, Query(max_length=16, description="device id")] = None,
    spec_hash: Annotated[str | None, Query(max_length=16)] = None,
    kind: JobKind | None = None,
    scope: Annotated[
        Literal["latest", "all"], Query(description="each pair's newest result, or every result with history")
    ] = "latest",
    flagged_only: Annotated[bool, Query(description="only regressions and improvements")] = True,
) -> dict[str, Any]:
    """Flagged results (regression or improvement, with the change in %), newest first, and the rule."""
    verdicts = regressions.detect(
        session,
        device_id=device,
        spec_hash=spec_hash,
        kind=kind,
        latest_only=scope == "latest",
        flagged_only=flagged_only,
    )
    return {
        "rule": {
            "min_history": regressions.MIN_HISTORY,
            "history_window": regressions.HISTORY_WINDOW,
            "min_change_pct": 100 * regressions.MIN_CHANGE,
            "z_threshold": regressions.Z_THRESHOLD,
            "alpha": regressions.ALPHA,
            "spread_floor_pct": 100 * regressions.SPREAD_FLOOR,
            "spread": "max(1.4826 MAD of the history's run medians, within-run robust sigma of the history "
            "(median over runs) and of the new run, spread_floor_pct of the baseline)",
            "metric": "samples_per_s (higher is better)",
        },
        "total": len(verdicts),
        "items": [verdict.as_dict() for verdict in verdicts],
    }
