"""Fault 4: PostgreSQL restarts under a running stack; nothing is restarted by hand.

A private cluster (initdb + pg_ctl in a temp dir) serves the API, a worker and the reconciler. While it is
down, `/readyz` answers 503 (and `/healthz` still 200); a job that was running when it stopped finishes
once it is back (the worker retries its writes); after the restart the same API and worker processes
accept and run new jobs.
"""

from __future__ import annotations

import time

import pytest

from services.jobs.models import Job
from tests.faults.conftest import (
    ApiProcess,
    Stack,
    free_port,
    point_client_at,
    private_postgres,
    private_redis,
    unique,
)
from tests.support.jobs import tiny_spec, wait_until

DOWN_S = 8.0
RECONCILER = {"BPBENCH_WORKER_DEAD_AFTER_S": "5", "BPBENCH_RECONCILE_INTERVAL_S": "1"}


def _status(stack: Stack, job_id: str) -> str:
    with stack.maker()() as session:
        job = session.get(Job, job_id)
        return job.status if job is not None else "missing"


@pytest.mark.slow
def test_the_api_and_workers_recover_from_a_postgres_restart_by_themselves(stack: Stack) -> None:
    database = private_postgres(stack)
    private_redis(stack)
    point_client_at(stack)
    api = ApiProcess(stack, free_port())
    api.start()
    worker = stack.worker(unique("pg"))
    stack.reconciler(**RECONCILER)
    pids = (api.proc.pid if api.proc else 0, worker.pid)
    assert api.readyz() == 200

    with api.client() as client:
        running = client.post("/api/v1/jobs", json=tiny_spec(steps=25_000, seed=400).model_dump(mode="json"))
    assert running.status_code == 202
    running_id = running.json()["id"]
    wait_until(lambda: _status(stack, running_id) == "running", 60, "the first job to run")

    database.stop("fast")
    stopped_at = time.monotonic()
    saw_503 = wait_until(lambda: api.readyz() == 503, 20, "/readyz to answer 503")
    first_503_s = time.monotonic() - stopped_at
    with api.client() as client:
        assert client.get("/healthz").status_code == 200
        body = client.get("/readyz").json()
    assert body["status"] == "unavailable" and body["checks"]["database"] != "ok"
    assert body["checks"]["broker"] == "ok"
    time.sleep(max(0.0, DOWN_S - (time.monotonic() - stopped_at)))
    database.start()
    started_at = time.monotonic()
    wait_until(lambda: api.readyz() == 200, 60, "/readyz to answer 200 again")
    ready_again_s = time.monotonic() - started_at

    with api.client() as client:
        after = client.post("/api/v1/jobs", json=tiny_spec(seed=401).model_dump(mode="json"))
    assert after.status_code == 202, after.text
    after_id = after.json()["id"]
    wait_until(lambda: stack.all_final([running_id, after_id]), 90, "both jobs to finish", interval_s=0.5)

    with stack.maker()() as session:
        first, second = session.get(Job, running_id), session.get(Job, after_id)
        assert first is not None and second is not None
        assert (first.status, first.attempts) == ("succeeded", 1), first.error
        assert (second.status, second.worker_name) == ("succeeded", worker.name), second.error
    assert stack.counts([running_id, after_id]) == {"succeeded": 2, "results": 2, "duplicates": 0}
    assert (api.proc.pid if api.proc else 0, worker.pid) == pids and api.proc and api.proc.alive()
    assert saw_503
    print(
        f"\nfault 4 (PostgreSQL restart): down {DOWN_S:.0f} s; /readyz 503 after {first_503_s:.1f} s, "
        f"200 again {ready_again_s:.1f} s after the start; the running job finished on attempt 1; "
        "2 jobs, 2 results, 0 duplicates, no process restarted"
    )
