"""Worker identity and liveness with real processes: duplicate names, a stop of the wrong process, SIGSTOP.

A private redis-server, a fresh database on the shared PostgreSQL, real `bpbench worker` processes and,
for the SIGSTOP case, a `bpbench reconciler` with short timings (dead after 4 s, a pass every second).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import psutil
import pytest

from harness.processes import bpbench_command
from services.devices.models import Worker
from services.jobs import service as jobs
from services.jobs.models import Job
from tests.faults.conftest import Stack, point_client_at, private_redis, shared_postgres_database, unique
from tests.support.jobs import tiny_spec, wait_until

DEAD_AFTER_S = 4.0


@pytest.fixture
def servers(stack: Stack, request: pytest.FixtureRequest) -> Stack:
    """Redis and PostgreSQL of the test's own."""
    shared_postgres_database(stack, request)
    private_redis(stack)
    point_client_at(stack)
    return stack


def _row(stack: Stack, name: str) -> Worker | None:
    with stack.maker()() as session:
        return session.get(Worker, name)


def _live(stack: Stack, name: str) -> Worker | None:
    row = _row(stack, name)
    return row if row is not None and row.stopped_at is None else None


def _default_worker(stack: Stack, label: str) -> None:
    argv = [*bpbench_command(), "worker", "--device", "cpu", "--threads", "1"]
    stack.spawn(label, argv, stack.env(BPBENCH_WORKER_DEAD_AFTER_S="15"))


def test_two_workers_of_one_default_name_get_two_rows_and_the_second_stop_leaves_the_first_live(
    servers: Stack,
) -> None:
    stack = servers
    base = f"cpu@{socket.gethostname()}"
    _default_worker(stack, "first")
    first = wait_until(lambda: _live(stack, base), 60, f"{base} to consume")
    _default_worker(stack, "second")
    second = wait_until(lambda: _live(stack, f"{base}-2"), 60, f"{base}-2 to consume")
    assert first.pid != second.pid

    stack.procs[1].stop()
    stopped = wait_until(lambda: (row := _row(stack, f"{base}-2")) and row.stopped_at, 30, "the stop")
    beat_after_stop = wait_until(
        lambda: (row := _live(stack, base)) and row.last_heartbeat > stopped and row,
        15,
        "a beat of the first",
    )

    assert beat_after_stop.pid == first.pid
    assert stack.procs[0].alive()


def test_a_second_worker_with_the_name_of_a_live_one_is_refused_in_one_line(servers: Stack) -> None:
    stack = servers
    name = unique("named")
    stack.worker(name)
    holder = _live(stack, name)
    assert holder is not None

    refused = subprocess.run(
        [*bpbench_command(), "worker", "--device", "cpu", "--name", name],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"error: --name {name!r} is held by a live worker (stop it, or wait 15 s after it died); "
        "choose another --name"
    ]
    still = _live(stack, name)
    assert still is not None and still.pid == holder.pid


@pytest.mark.slow
def test_sigstop_of_the_worker_main_process_leaves_its_running_job_to_the_pool_child(servers: Stack) -> None:
    stack = servers
    timings = {"BPBENCH_WORKER_DEAD_AFTER_S": str(DEAD_AFTER_S), "BPBENCH_RECONCILE_INTERVAL_S": "1"}
    worker = stack.worker(unique("stopped-main"), env=stack.env(**timings))
    stack.reconciler(**timings)
    with stack.maker()() as session:
        # Long enough to outlast the stop on any machine; cancelled once the point is made.
        job_id = jobs.submit_job(session, tiny_spec(steps=1_000_000, seed=17)).id

    def running() -> Job | None:
        with stack.maker()() as session:
            job = session.get(Job, job_id)
            return job if job is not None and job.status == "running" and job.progress > 0.001 else None

    wait_until(running, 60, "the job to run")
    assert len(psutil.Process(worker.pid).children(recursive=True)) == 1
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        # The main process is silent for three times the dead-after time: the reconciler judges the job
        # every second meanwhile, by the heartbeat its pool child keeps writing.
        time.sleep(3 * DEAD_AFTER_S)
        silent = _row(stack, worker.name)
        silent_for_s = time.time() - silent.last_heartbeat.timestamp() if silent else 0.0
        during = running()
    finally:
        os.kill(worker.pid, signal.SIGCONT)

    assert silent_for_s > DEAD_AFTER_S
    assert during is not None and during.attempts == 1

    # Woken up, the same attempt goes on: its pool child keeps stepping, nobody re-ran it.
    def advanced() -> Job | None:
        job = running()
        return job if job is not None and job.progress > during.progress else None

    after = wait_until(advanced, 60, "the job to go on after SIGCONT")
    assert after.attempts == 1 and after.worker_name == during.worker_name
    with stack.maker()() as session:
        jobs.cancel_job(session, job_id)
        session.commit()

    def final() -> Job | None:
        with stack.maker()() as session:
            job = session.get(Job, job_id)
            return job if job is not None and job.is_final else None

    done = wait_until(final, 60, "the job to end")
    assert (done.status, done.attempts) == ("cancelled", 1), done.error
    assert stack.counts([job_id])["duplicates"] == 0
