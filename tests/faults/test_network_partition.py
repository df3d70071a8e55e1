"""Fault 5: a worker is cut off the network in the middle of a job; the job is re-run elsewhere, once.

The worker runs in a network namespace of the test's own, joined to the host by a veth pair; the private
redis-server and PostgreSQL cluster listen on the host side of it (and on loopback, for the host's
processes). Taking the host side of the link down leaves the worker running but unable to reach either:
its heartbeats stop, the reconciler requeues the job, a worker on the host runs it. When the link returns,
the cut-off worker's attempt is fenced: its result (or its progress) is refused, and no duplicate is written.
"""

from __future__ import annotations

import time

import pytest

from services.jobs import service as jobs
from services.jobs.models import Job
from tests.faults.conftest import (
    Stack,
    network_namespace,
    point_client_at,
    private_postgres,
    private_redis,
    unique,
)
from tests.support.jobs import tiny_spec, wait_until

LONG_STEPS = 40_000  # about 8 s on one BLAS thread
RECONCILER = {"BPBENCH_WORKER_DEAD_AFTER_S": "5", "BPBENCH_RECONCILE_INTERVAL_S": "1"}
FENCED = ("no longer this attempt's; result dropped", "was taken over by a newer attempt; stopped")


def _job(stack: Stack, job_id: str) -> Job:
    with stack.maker()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


@pytest.mark.slow
def test_a_worker_cut_off_mid_job_is_replaced_and_writes_no_duplicate_when_it_returns(stack: Stack) -> None:
    ns = network_namespace(stack)
    database = private_postgres(stack, listen=("127.0.0.1", ns.host_ip), trust_from=(ns.network,))
    broker = private_redis(stack, binds=("127.0.0.1", ns.host_ip))
    point_client_at(stack)
    remote_env = stack.env(
        BPBENCH_DATABASE_URL=database.url_on(ns.host_ip), BPBENCH_BROKER_URL=broker.url_on(ns.host_ip)
    )
    remote = stack.worker(unique("netns"), prefix=ns.exec_prefix, env=remote_env)
    stack.reconciler(**RECONCILER)

    with stack.maker()() as session:
        job_id = jobs.submit_job(session, tiny_spec(steps=LONG_STEPS, seed=500)).id
    wait_until(
        lambda: (job := _job(stack, job_id)).status == "running" and job.progress > 0.05,
        60,
        "the job to run in the namespace",
    )
    assert _job(stack, job_id).worker_name == remote.name

    ns.cut()
    cut_at = time.monotonic()
    local = stack.worker(unique("host"))
    wait_until(
        lambda: (job := _job(stack, job_id)).attempts == 2 and job.status != "queued",
        60,
        "the job to be re-run on the host",
    )
    rerun_after_s = time.monotonic() - cut_at
    wait_until(lambda: _job(stack, job_id).is_final, 60, "the re-run to finish")
    done = _job(stack, job_id)
    assert remote.alive()  # cut off, not dead: it still holds its own attempt

    ns.restore()
    restored_at = time.monotonic()
    wait_until(
        lambda: any(line in remote.log(20_000) for line in FENCED), 120, "the cut-off attempt to be fenced"
    )
    fenced_after_s = time.monotonic() - restored_at
    time.sleep(1.0)
    counts = stack.counts([job_id])

    assert (done.status, done.attempts, done.worker_name) == ("succeeded", 2, local.name)
    assert counts == {"succeeded": 1, "results": 1, "duplicates": 0}, counts
    assert _job(stack, job_id).worker_name == local.name
    print(
        f"\nfault 5 (network cut): re-run on the host {rerun_after_s:.1f} s after the cut; the cut-off "
        f"attempt was fenced {fenced_after_s:.1f} s after the link returned; 1 job, 1 result, 0 duplicates"
    )
