"""Fault 6 (load): 10,000 small jobs through two workers: 10,000 results, no duplicates, none left behind.

The jobs are created through the service layer in one transaction and published one message each, as the
API would; two `bpbench worker` processes (one pool process each, one BLAS thread) and a reconciler serve
them from a private redis-server and a private PostgreSQL cluster (so the load does not slow the shared
servers the rest of the suite uses).
"""

from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import insert, select, update

from services.core.config import hard_time_limit_s
from services.core.db import utcnow
from services.core.queue import RUN_JOB_TASK, get_celery_app
from services.jobs import service as jobs
from services.jobs.models import Job, new_job_id
from tests.faults.conftest import Stack, point_client_at, private_postgres, private_redis, unique
from tests.support.jobs import tiny_spec, wait_until

JOBS = int(os.environ.get("BPBENCH_LOAD_JOBS", "10000"))
DEADLINE_S = 540.0
# Two pool processes per worker: one runs while the other waits on the database.
WORKER_PROCESSES = int(os.environ.get("BPBENCH_LOAD_CONCURRENCY", "2"))
# One training step of a 4-4-2 MLP on 16 synthetic samples: ~5 ms in the engine.
SMALL = {
    "model": {"name": "mlp", "layers": [4, 4, 2]},
    "synthetic_samples": 16,
    "steps": 1,
    "batch_size": 4,
    "loss_samples": 1,
    "eval_samples": 4,
    "timing": {"warmup": 0, "window": 1, "min_repeats": 1, "max_repeats": 1},
}


@pytest.mark.slow
def test_ten_thousand_small_jobs_through_two_workers_all_finish_once(stack: Stack) -> None:
    private_postgres(stack)
    private_redis(stack)
    point_client_at(stack)
    for name in (unique("load-a"), unique("load-b")):
        stack.worker(name, concurrency=WORKER_PROCESSES, loglevel="WARNING")  # two log lines a job add up
    stack.reconciler()
    spec = tiny_spec(**SMALL)

    started = time.monotonic()
    with stack.maker()() as session:
        # One row made by the service layer, then the other rows as copies of it in one bulk INSERT.
        template = jobs.create_job(session, spec)
        columns = {c.key: getattr(template, c.key) for c in Job.__table__.columns if c.key != "id"}
        # Marked published as they are committed, as the API does within milliseconds; otherwise the
        # reconciler would rightly publish the rows still waiting their turn here a second time.
        columns["published_at"] = utcnow()
        job_ids = [template.id] + [new_job_id() for _ in range(JOBS - 1)]
        session.execute(update(Job).where(Job.id == template.id).values(published_at=columns["published_at"]))
        session.execute(insert(Job), [{**columns, "id": job_id} for job_id in job_ids[1:]])
        session.commit()
    celery_app = get_celery_app()
    with celery_app.producer_or_acquire() as producer:  # one connection for the 10,000 messages
        for job_id in job_ids:
            celery_app.send_task(
                RUN_JOB_TASK, args=[job_id], queue="cpu", routing_key="cpu", producer=producer,
                time_limit=hard_time_limit_s(template.time_limit_s) if template.time_limit_s else None,
            )  # fmt: skip
    submitted_s = time.monotonic() - started

    def finished() -> bool:
        if not all(proc.alive() for proc in stack.procs):
            raise AssertionError(f"a process died:\n{stack.logs()}")
        return stack.all_final()  # the database is the test's own: every job in it is one of these

    wait_until(finished, DEADLINE_S, f"{JOBS} jobs to finish", interval_s=2.0)
    elapsed_s = time.monotonic() - started
    counts = stack.counts()

    with stack.maker()() as session:
        spans = session.execute(select(Job.worker_name, Job.started_at, Job.finished_at)).all()
    in_job_s = sum((end - start).total_seconds() for _, start, end in spans if start and end)
    assert counts == {"succeeded": JOBS, "results": JOBS, "duplicates": 0}, counts
    print(f"\nmean claim-to-result time {in_job_s / len(spans) * 1000:.1f} ms per job")
    print(
        f"\nfault 6 (load): {JOBS} jobs, {counts['results']} results, {counts['duplicates']} duplicates, "
        f"submitted in {submitted_s:.1f} s, all done in {elapsed_s:.1f} s ({JOBS / elapsed_s:.0f} jobs/s)"
    )
