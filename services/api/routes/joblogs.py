"""`/api/v1/jobs/{id}/logs` and `/api/v1/jobs/{id}/loss-curve`: what the job's worker said while it ran."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AliasChoices, BaseModel, Field

from services.api.deps import ReadAccess, SessionDep
from services.joblogs import service
from services.joblogs.models import MAX_CURVE_POINTS, MAX_LINES_PER_ATTEMPT, MAX_MESSAGE_CHARS
from services.jobs.service import require_job

router = APIRouter(prefix="/jobs", tags=["jobs"])

MAX_LINES_PER_PAGE = 1000
MAX_SEQ = 2**63 - 1  # the largest integer both databases compare with


class JobLogLineOut(BaseModel):
    """One log line of one attempt."""

    seq: int = Field(
        validation_alias=AliasChoices("id", "seq"),
        description="the line's sequence number: pass the last one seen as `after`",
    )
    attempt: int = Field(description="the attempt (1, 2, ...) whose worker logged it")
    time: datetime = Field(
        validation_alias=AliasChoices("logged_at", "time"), description="when the worker logged it (UTC)"
    )
    level: str
    logger: str
    message: str = Field(description=f"at most {MAX_MESSAGE_CHARS} characters (a longer one keeps its ends)")


class JobLogPage(BaseModel):
    """The job's log lines after `after`, oldest first."""

    job_id: str
    status: str = Field(description="the job's status when the lines were read")
    items: list[JobLogLineOut]
    last_seq: int = Field(description="the sequence number to pass as `after` next (`after` when no line)")
    complete: bool = Field(
        description=f"true once no line will be added: the job is final and finished "
        f"{service.LOG_SETTLE_S:g} s ago (its worker writes the attempt's last lines right after the "
        "outcome); follow the log until then"
    )


class LossCurveOut(BaseModel):
    """The loss reported so far by the job's newest attempt (train jobs); the final curve, once the job
    succeeded, is the result's `metrics.loss_curve`."""

    job_id: str
    status: str
    attempt: int | None = Field(description="the attempt the points are from; null when none reported")
    total_steps: int | None = Field(description="the steps the attempt trains")
    points: list[list[int | float]] = Field(
        description=f"[[step, loss], ...] in step order, at most {MAX_CURVE_POINTS} (evenly thinned; the "
        "first and the newest kept)"
    )
    updated_at: datetime | None


@router.get(
    "/{job_id}/logs",
    response_model=JobLogPage,
    dependencies=[ReadAccess],
    description="The log lines the job's workers stored, every attempt's, each with its attempt: at most "
    f"{MAX_LINES_PER_ATTEMPT} per attempt (its first lines and its last, with a line saying how many were "
    "left out between). Poll with `?after=<last_seq>` until `complete`.",
)
def job_logs(
    job_id: str,
    session: SessionDep,
    after: Annotated[
        int,
        Query(ge=0, le=MAX_SEQ, description="only the lines after this one (a page's `last_seq`)"),
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LINES_PER_PAGE)] = MAX_LINES_PER_PAGE,
) -> JobLogPage:
    """The job's log lines after `after`."""
    job = require_job(session, job_id)
    # Judged before the lines are read: a `complete` page holds every line written before it was judged.
    complete = service.logs_complete(job)
    items = [
        JobLogLineOut.model_validate(line, from_attributes=True)
        for line in service.log_lines(session, job_id, after=after, limit=limit)
    ]
    return JobLogPage(
        job_id=job.id,
        status=job.status,
        items=items,
        last_seq=items[-1].seq if items else after,
        complete=complete and len(items) < limit,
    )


@router.get("/{job_id}/loss-curve", response_model=LossCurveOut, dependencies=[ReadAccess])
def job_loss_curve(job_id: str, session: SessionDep) -> LossCurveOut:
    """The loss points the job's newest attempt has reported so far (train jobs; empty for the others
    and before the first report). The dashboard draws them while the job runs."""
    job = require_job(session, job_id)
    curve = service.latest_loss_curve(session, job_id)
    if curve is None:
        return LossCurveOut(
            job_id=job.id, status=job.status, attempt=None, total_steps=None, points=[], updated_at=None
        )
    return LossCurveOut(
        job_id=job.id,
        status=job.status,
        attempt=curve.attempt,
        total_steps=curve.total_steps,
        points=curve.points,
        updated_at=curve.updated_at,
    )
