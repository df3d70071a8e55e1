"""The Celery tasks `bpbench.run_job(job_id)` and `bpbench.tick`: the tasks and little else, as in Celery's
`proj/tasks.py`.

The task hands the job id and this worker's identity to `services.jobs.runner.execute_job`, which claims
the job, runs it and records the outcome. It is a shared task: it joins whichever Celery app the process
builds (`services.core.queue.get_celery_app`), so importing this module builds no app and reads no
settings.

The task's state mirrors the job row for Flower and `celery events`: a job recorded as failed raises
`JobFailed` (state FAILURE, the job's error as the exception) *after* the row was written. The message is
still acknowledged exactly once: an exception other than a lost worker or a time limit is acked under
`task_acks_on_failure_or_timeout`, the task has no retry, and the row stays the truth.
"""

from __future__ import annotations

from celery import Task, shared_task

from services.core.logging import job_context
from services.core.queue import RUN_JOB_TASK, TICK_TASK
from services.jobs.runner import WorkerContext, execute_job

_context: WorkerContext | None = None


class JobFailed(Exception):
    """The job ran and was recorded as failed; the message is the job's error as stored in its row."""


def configure_worker(context: WorkerContext) -> None:
    """Set this process's worker context (before the pool forks, so the children inherit it)."""
    global _context
    _context = context


def current_context() -> WorkerContext:
    """The worker context; a task delivered to a process that never registered a device is an error."""
    if _context is None:
        raise RuntimeError("this process is not a registered bpbench worker (start it with `bpbench worker`)")
    return _context


@shared_task(
    name=RUN_JOB_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    throws=(JobFailed,),  # an expected outcome: Celery logs it in one line, without a traceback
    # The main process's side of a delivery: it watches the pool process's memory and, if the kernel kills
    # that process for memory, fails the job saying so (workers/job_request.py).
    Request="workers.job_request:JobRequest",
)
def run_job_task(self: Task, job_id: str) -> str:
    """Celery entry point: run job `job_id` on this worker's device; raises `JobFailed` if it failed."""
    context = current_context()
    # Every log line about this job names the job, the worker and the device.
    with job_context(str(job_id), context.name, context.device_id):
        outcome = execute_job(str(job_id), context)
    if outcome.status == "failed":
        raise JobFailed(outcome.error)
    return outcome.status


@shared_task(name=TICK_TASK, ignore_result=True)
def tick_task() -> dict[str, object]:
    """Celery beat's minute tick: submit due schedules, store and deliver alerts (services.schedules.tick)."""
    from services.core.config import get_settings
    from services.core.db import session_factory
    from services.schedules.tick import tick

    settings = get_settings()
    return tick(session_factory(settings), settings)
