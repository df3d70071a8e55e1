"""Fault 2: the broker stops with jobs queued, and starts again: every job finishes, once.

The private redis-server keeps nothing on disk, so stopping it loses every message it held: the jobs
queued at that moment survive only as rows. More jobs are submitted while it is down (their publish fails;
they stay `queued` and unpublished). After the restart the worker reconnects by itself and the reconciler
publishes what was never published and republishes what the broker lost.
"""

from __future__ import annotations

import time

import pytest

from services.jobs import service as jobs
from tests.faults.conftest import Stack, point_client_at, private_redis, shared_postgres_database, unique
from tests.support.jobs import tiny_spec, wait_until

BEFORE, DURING = 30, 10
RECONCILER = {"BPBENCH_QUEUED_REPUBLISH_AFTER_S": "5", "BPBENCH_RECONCILE_INTERVAL_S": "1"}


@pytest.mark.slow
def test_jobs_queued_when_the_broker_stops_all_finish_after_it_starts_again(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    shared_postgres_database(stack, request)
    broker = private_redis(stack)
    point_client_at(stack)
    worker = stack.worker(unique("broker"))
    stack.reconciler(**RECONCILER)
    started = time.monotonic()

    with stack.maker()() as session:
        before = [jobs.submit_job(session, tiny_spec(steps=1500, seed=200 + i)).id for i in range(BEFORE)]
    assert all(j is not None for j in before)
    broker.stop()  # messages still queued are gone with it
    lost_at_stop = BEFORE - sum(stack.counts(before).get(s, 0) for s in ("succeeded", "running"))
    with stack.maker()() as session:
        during = [jobs.submit_job(session, tiny_spec(steps=1500, seed=300 + i)) for i in range(DURING)]
    assert [job.published_at for job in during] == [None] * DURING  # refused by the broker, kept as rows
    time.sleep(3)
    broker.start()
    restarted_at = time.monotonic()

    every = before + [job.id for job in during]
    wait_until(lambda: stack.all_final(every), 120, f"all {len(every)} jobs to finish", interval_s=0.5)
    counts = stack.counts(every)

    assert counts == {"succeeded": BEFORE + DURING, "results": BEFORE + DURING, "duplicates": 0}, counts
    assert worker.alive()
    assert lost_at_stop > 0  # the test did lose queued messages
    print(
        f"\nfault 2 (broker restart): {len(every)} jobs ({lost_at_stop} queued when it stopped, {DURING} "
        f"submitted while down), {counts['results']} results, 0 duplicates; all done "
        f"{time.monotonic() - restarted_at:.1f} s after the restart, "
        f"{time.monotonic() - started:.1f} s in all"
    )
