"""Fault 1: a worker is SIGKILLed in the middle of a job; the job finishes elsewhere with exactly one result.

Real processes: a private redis-server, a fresh database on the shared PostgreSQL, two `bpbench worker`
processes and a `bpbench reconciler` with the production timing defaults (heartbeat 3 s, dead after 15 s,
a pass every 5 s), so the measured re-run time is the one a deployment gets.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from services.jobs import service as jobs
from services.jobs.models import Job
from tests.faults.conftest import Stack, point_client_at, private_redis, shared_postgres_database, unique
from tests.support.jobs import tiny_spec, wait_until

# About 5 s of training on one BLAS thread: long enough to be killed in the middle.
LONG_STEPS = 25_000
DEFAULTS = {"BPBENCH_HEARTBEAT_INTERVAL_S": "3"}  # the other timings are the Settings defaults
RERUN_DEADLINE_S = 30.0  # the promise: a job whose worker died runs again within 30 s


def _job(stack: Stack, job_id: str) -> Job:
    with stack.maker()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _final(stack: Stack, job_id: str) -> Job | None:
    job = _job(stack, job_id)
    return job if job.is_final else None


def _running_attempt(stack: Stack, job_id: str, attempt: int) -> Job | None:
    job = _job(stack, job_id)
    return job if job.status == "running" and job.attempts == attempt and job.progress > 0.05 else None


@pytest.fixture
def two_workers(stack: Stack, request: pytest.FixtureRequest) -> Stack:
    """Redis, PostgreSQL, two workers and a reconciler with the default timings."""
    shared_postgres_database(stack, request)
    private_redis(stack)
    point_client_at(stack)
    for name in (unique("killed-a"), unique("killed-b")):
        stack.worker(name, env=stack.env(**DEFAULTS))
    stack.reconciler(**DEFAULTS)
    return stack


@pytest.mark.slow
def test_a_job_whose_worker_is_sigkilled_finishes_on_another_worker_with_one_result(
    two_workers: Stack,
) -> None:
    stack = two_workers
    with stack.maker()() as session:
        job_id = jobs.submit_job(session, tiny_spec(steps=LONG_STEPS, seed=101)).id
    first = wait_until(lambda: _running_attempt(stack, job_id, 1), 60, "the job to be running")
    victim = next(proc for proc in stack.procs if proc.name == first.worker_name)

    victim.kill()  # SIGKILL to the whole process group: main process and pool child
    killed_at = time.time()
    second = wait_until(
        lambda: _running_attempt(stack, job_id, 2), 60, "the job to run again", interval_s=0.2
    )
    rerun_after_s = second.started_at.timestamp() - killed_at if second.started_at else float("inf")
    done = wait_until(lambda: _final(stack, job_id), 60, "the rerun to finish")

    assert (done.status, done.attempts) == ("succeeded", 2), done.error
    assert done.worker_name != first.worker_name
    assert rerun_after_s < RERUN_DEADLINE_S, f"re-ran after {rerun_after_s:.1f} s"
    assert stack.counts([job_id]) == {"succeeded": 1, "results": 1, "duplicates": 0}
    print(f"\nfault 1 (worker SIGKILL): re-run after {rerun_after_s:.1f} s, 1 result, 0 duplicates")


@pytest.mark.slow
def test_a_job_whose_pool_process_is_killed_while_its_worker_lives_runs_again(two_workers: Stack) -> None:
    # The worker's main process keeps beating; only the job's own heartbeat (in the pool child) stops.
    stack = two_workers
    with stack.maker()() as session:
        job_id = jobs.submit_job(session, tiny_spec(steps=LONG_STEPS, seed=102)).id
    first = wait_until(lambda: _running_attempt(stack, job_id, 1), 60, "the job to be running")
    worker = next(proc for proc in stack.procs if proc.name == first.worker_name)
    children = psutil.Process(worker.pid).children(recursive=True)
    assert len(children) == 1, children  # --concurrency 1: one pool process

    os.kill(children[0].pid, signal.SIGKILL)
    killed_at = time.time()
    second = wait_until(
        lambda: _running_attempt(stack, job_id, 2), 60, "the job to run again", interval_s=0.2
    )
    rerun_after_s = second.started_at.timestamp() - killed_at if second.started_at else float("inf")
    done = wait_until(lambda: _final(stack, job_id), 60, "the rerun to finish")

    assert (done.status, done.attempts) == ("succeeded", 2), done.error
    assert worker.alive()
    assert rerun_after_s < RERUN_DEADLINE_S, f"re-ran after {rerun_after_s:.1f} s"
    assert stack.counts([job_id]) == {"succeeded": 1, "results": 1, "duplicates": 0}
    print(f"\nfault 1b (pool child SIGKILL): re-run after {rerun_after_s:.1f} s, 1 result, 0 duplicates")
