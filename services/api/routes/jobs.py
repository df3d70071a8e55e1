"""`/api/v1/jobs`: submit a job (202 + Location), list and page jobs, follow one, cancel one."""

from __future__ import annotations

import logging
import math
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import AliasChoices, BaseModel, Field, computed_field, field_validator
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from engine.spec import DEVICE_ACCEPTED, backends_taking
from services.api.deps import MAX_OFFSET, TOTAL_CAP, ReadAccess, SessionDep, SubmitAccess
from services.api.errors import unprocessable
from services.api.group_commit import GroupCommit
from services.api.json_body import StrictJSONRoute, printable
from services.core.config import Settings
from services.devices.service import device_queue_classes, float64_refusal_of_registered, get_device
from services.jobs import service
from services.jobs.dataset_dirs import dataset_dirs_accepted, dataset_path_allowed
from services.jobs.models import Job
from services.jobs.resources import JobTooLarge, check_memory_cap, estimate_job_memory
from services.jobs.spec import JobKind, JobSpec, Text
from services.results.service import get_result_for_job

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=StrictJSONRoute)

MAX_SUMMARY_ROWS = 16

StatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobSubmission(JobSpec):
    """A JobSpec, plus `target`: the id of one exact device to run on (see `GET /api/v1/devices`)."""

    target: Text | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="exact device id; default: any worker of the spec's class",
    )

    def engine_dict(self) -> dict[str, Any]:
        """The spec's engine dict, without the routing field: a submission is used as its own validated
        spec (no copy, no second validation)."""
        return self._resolved(self.model_dump(mode="json", exclude={"target"}))


class ResultSummary(BaseModel):
    """The headline of a succeeded job's result; the full document is at `GET /api/v1/results?job_id=`."""

    id: int
    samples_per_s: float | None
    samples_per_s_ci95: list[float | None]
    trial_count: int
    engine_time_s: float | None
    metrics: dict[str, Any] = Field(description="the engine's metrics, without long series (loss curve)")


class JobOut(BaseModel):
    """A job as the API shows it."""

    id: str
    status: str
    kind: str
    device: str = Field(description=f"the spec's device: {DEVICE_ACCEPTED}")
    device_class: str
    target_device_id: str | None
    queue: str
    progress: float
    progress_message: str | None
    cancel_requested: bool
    attempts: int
    error: str | None
    worker: str | None = Field(validation_alias=AliasChoices("worker_name", "worker"))
    device_id: str | None = Field(description="the device that ran (or runs) it")
    spec_hash: str
    spec: dict[str, Any]
    created_at: datetime
    published_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    result: ResultSummary | None = None
    suite_item: str | None = Field(None, description="the suite entry this job runs, for suite submissions")

    @computed_field(  # type: ignore[prop-decorator]
        description="the backends whose workers may take it, by its device's spelling (cpu: numpy; gpu: "
        "cuda, rocm; xla:cpu:0: xla); the stack of the device that ran it is that device's "
        "(GET /api/v1/devices)"
    )
    @property
    def backends(self) -> list[str]:
        return list(backends_taking(self.device))

    @field_validator("spec", "progress_message", "error", "worker", mode="after")
    @classmethod
    def _printable(cls, value: Any) -> Any:
        # A row stored before the API refused lone surrogates must still list (as U+FFFD), not be a 500.
        return printable(value)


class JobPage(BaseModel):
    """One page of jobs, newest first."""

    total: int = Field(description=f"jobs matching the filters, counted exactly up to {TOTAL_CAP:,}")
    total_exact: bool = Field(
        True, description=f"false when more than {TOTAL_CAP:,} jobs match: `total` is then {TOTAL_CAP:,}"
    )
    limit: int
    offset: int
    items: list[JobOut]


def _summary_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics worth a glance: scalars and short tables (per-size rows), not long curves."""

    def keep(value: Any) -> bool:
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, list):
            return len(value) <= MAX_SUMMARY_ROWS
        return isinstance(value, str | bool | int | dict)

    return {key: value for key, value in metrics.items() if keep(value)}


def job_out(session: Session, job: Job, *, with_result: bool = True, suite_item: str | None = None) -> JobOut:
    """The API view of a job (with its result summary once it succeeded)."""
    summary = None
    if with_result and job.status == "succeeded":
        result = get_result_for_job(session, job.id)
        if result is not None:
            summary = ResultSummary(
                id=result.id,
                samples_per_s=result.samples_per_s,
                samples_per_s_ci95=[result.samples_per_s_ci_low, result.samples_per_s_ci_high],
                trial_count=result.trial_count,
                engine_time_s=result.engine_time_s,
                metrics=_summary_metrics(result.metrics or {}),
            )
    view = JobOut.model_validate(job, from_attributes=True)
    return view.model_copy(update={"result": summary, "suite_item": suite_item})


def check_target(session: Session, spec: JobSpec, target: str | None) -> None:
    """422 unless `target` names a registered device of the spec's class."""
    if target is None:
        return
    device = get_device(session, target)
    if device is None:
        raise unprocessable(
            "target",
            "body",
            target,
            "the id of a registered device (GET /api/v1/devices)",
            f"target: no registered device has id {target!r}",
        )
    if spec.device_class not in device_queue_classes(device):
        raise unprocessable(
            "target",
            "body",
            target,
            f"a {spec.device_class} device, as the spec's device is {spec.device!r}",
            f"target: device {target!r} is a {device.device_class}, the spec asks for {spec.device!r}",
        )


def check_float64(session: Session, spec: JobSpec, target: str | None) -> None:
    """422 naming `dtype` when every registered device that may take the float64 job lacks float64 (what
    its spelling alone says, a TPU's, the spec refused already)."""
    refusal = float64_refusal_of_registered(
        session, spec.device, spec.device_class, spec.dtype, target=target
    )
    if refusal is not None:
        raise unprocessable("dtype", "body", spec.dtype, refusal, f"dtype: {refusal}")


def check_memory(spec: JobSpec, cap_bytes: int, engine_doc: dict[str, Any] | None = None) -> None:
    """422 when the job's estimated memory (services/jobs/resources.py) is over the server's cap
    (`engine_doc`: the spec's `engine_dict()`, when the caller has it)."""
    try:
        check_memory_cap(spec, cap_bytes, engine_doc=engine_doc)
    except JobTooLarge as exc:
        raise unprocessable(
            "spec",
            "body",
            estimate_job_memory(spec, engine_doc=engine_doc).total_bytes,
            f"an estimated memory of at most {cap_bytes} bytes (BPBENCH_MAX_JOB_MEMORY_BYTES)",
            str(exc),
        ) from None


def check_dataset_path(spec: JobSpec, dataset_dirs: list[Path]) -> None:
    """422 unless the spec's `dataset_path` (if any) lies inside `BPBENCH_DATASET_DIRS`: the same answer
    for every path outside them, whether it exists or not."""
    if spec.dataset_path is None or dataset_path_allowed(spec.dataset_path, dataset_dirs):
        return
    accepted = dataset_dirs_accepted(dataset_dirs)
    raise unprocessable(
        "dataset_path",
        "body",
        spec.dataset_path,
        accepted,
        f"dataset_path: {spec.dataset_path[:200]!r} is not a path this server reads; accepted: {accepted}",
    )


def _check_in_database(factory: sessionmaker[Session], spec: JobSpec, target: str | None) -> None:
    with factory() as session:
        check_target(session, spec, target)
        check_float64(session, spec, target)


def submitted_job_json(row: dict[str, Any], published_at: datetime | None) -> bytes:
    """The 202 body of a job just committed: `JobOut` of its row, serialised once (never re-validated)."""
    # The row has every column a new job has; the columns it lacks (worker, error, ...) are None.
    values: dict[str, Any] = {name: row.get(name) for name in JobOut.model_fields}
    values["published_at"] = published_at
    job = JobOut.model_construct(**values)
    return job.model_dump_json().encode()


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={
        401: {"description": "no valid token"},
        422: {"description": "a field is out of range"},
        503: {"description": "the database could not store the job (nothing was accepted; retry)"},
    },
    dependencies=[SubmitAccess],
)
async def submit_job(submission: JobSubmission, request: Request) -> Response:
    """Accept a job: the row is committed (queued) before its id is sent to the broker and before this answer.

    Concurrent submissions are committed together (one INSERT and one COMMIT per batch: see
    `services/api/group_commit.py`). If the broker cannot be reached the job still answers 202 and stays
    `queued` with `published_at` unset; the reconciler publishes it later. If the database cannot store it
    the answer is 503 with `Retry-After`, and nothing was accepted.
    """
    spec: JobSpec = submission  # the validated spec itself; its engine dict leaves `target` out
    engine_doc = submission.engine_dict()  # once: the memory estimate and the row both read it
    settings: Settings = request.app.state.settings
    check_dataset_path(spec, settings.dataset_dirs)
    # Only a target or a float64 job needs the database: a plain float32 job goes straight to the batch.
    if submission.target is not None or spec.dtype == "float64":
        factory = request.app.state.session_factory
        await run_in_threadpool(_check_in_database, factory, spec, submission.target)
    # A job no worker could hold is refused here, not found out by a worker running out of memory.
    check_memory(spec, settings.max_job_memory_bytes, engine_doc)
    row = service.job_row(spec, target_device_id=submission.target, engine_doc=engine_doc)
    committer: GroupCommit = request.app.state.group_commit
    try:
        published_at = await committer.submit(row)
    except SQLAlchemyError as exc:
        log.warning("job not stored: %s", exc)
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"the database could not store the job ({type(exc).__name__}); nothing was accepted, "
            "retry later",
            headers={"Retry-After": "1"},
        ) from None
    return Response(
        submitted_job_json(row, published_at),
        status_code=status.HTTP_202_ACCEPTED,
        media_type="application/json",
        headers={"Location": f"/api/v1/jobs/{row['id']}"},
    )


@router.get("", response_model=JobPage, dependencies=[ReadAccess])
def list_jobs(
    session: SessionDep,
    status_: Annotated[StatusName | None, Query(alias="status")] = None,
    kind: JobKind | None = None,
    device: Annotated[
        str | None, Query(max_length=32, description="requested device or class, or the id of the device")
    ] = None,
    id_prefix: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=36,
            pattern=r"^[0-9a-f-]+$",
            description="the start of the job's id (the short id `bpbench jobs` and the dashboard print)",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobPage:
    """Jobs, newest first, with the total for these filters (exact up to 10,000, else `total_exact` false)."""
    filters: dict[str, Any] = {"status": status_, "kind": kind, "device": device, "id_prefix": id_prefix}
    jobs = service.list_jobs(session, limit=limit, offset=offset, **filters)
    total = service.count_jobs(session, cap=TOTAL_CAP, **filters)
    return JobPage(
        total=min(total, TOTAL_CAP),
        total_exact=total <= TOTAL_CAP,
        limit=limit,
        offset=offset,
        items=[job_out(session, job, with_result=False) for job in jobs],
    )


@router.get("/{job_id}", response_model=JobOut, dependencies=[ReadAccess])
def get_job(job_id: str, session: SessionDep) -> JobOut:
    """One job: status, progress, result summary (once succeeded), error (once failed)."""
    return job_out(session, service.require_job(session, job_id))


@router.post("/{job_id}/cancel", response_model=JobOut, dependencies=[SubmitAccess])
def cancel_job(job_id: str, session: SessionDep) -> JobOut:
    """Cancel: a queued job is cancelled at once; a running one stops between two steps. Final jobs stay."""
    return job_out(session, service.cancel_job(session, job_id))
