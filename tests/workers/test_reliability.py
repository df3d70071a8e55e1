"""What a real worker does with jobs that go wrong: divergence, time limits, memory, cancellation.

Each job runs on the session's real `bpbench worker` subprocess through real Redis, on SQLite and on
PostgreSQL; the memory cap at submission is checked through the real API.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.core.db import utcnow
from services.jobs import service as jobs
from services.jobs.resources import estimate_job_memory
from services.jobs.spec import JobSpec
from tests.support import apiserver
from tests.support.apiserver import ApiServer
from tests.support.jobs import tiny_spec, wait_for_job
from tests.support.workers import WorkerProcess

api = apiserver.api  # the shared API server fixture

# Found by trying: ten ReLU layers with weights of std 10 and lr 10 overflow float32 at the second step.
DIVERGING: dict[str, Any] = {
    "model": {"name": "mlp", "layers": [16, *[64] * 10, 10], "init": "std", "weight_init_std": 10},
    "optimizer": {"name": "sgd", "lr": 10},
    "steps": 50,
}
# About 150 GiB by the estimate: more than any test machine has free, well inside the spec's bounds.
HUGE: dict[str, Any] = {
    "model": {"name": "mlp", "layers": [784, *[2048] * 30, 10]},
    "batch_size": 65_536,
    "dtype": "float64",
}


def test_a_diverging_run_fails_with_its_step_and_the_worker_goes_on_serving(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as session:
        diverging = jobs.submit_job(session, tiny_spec(**DIVERGING))
        after = jobs.submit_job(session, tiny_spec(seed=31))

    failed = wait_for_job(session_maker, diverging.id)
    served = wait_for_job(session_maker, after.id)

    assert (failed.status, failed.error, failed.attempts) == ("failed", "diverged at step 2", 1)
    assert (served.status, served.worker_name) == ("succeeded", cpu_worker.name)
    assert cpu_worker.process.poll() is None


def test_a_job_past_its_time_limit_is_stopped_and_failed_with_the_limit(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as session:
        job = jobs.submit_job(session, tiny_spec(steps=1_000_000, time_limit_s=2, seed=32))

    done = wait_for_job(session_maker, job.id, timeout_s=30)

    assert done.status == "failed"
    assert done.error is not None and done.error.startswith("time limit of 2 s exceeded")
    assert done.started_at is not None and done.finished_at is not None
    assert 2.0 <= (done.finished_at - done.started_at).total_seconds() < 4.0
    assert done.time_limit_s == 2.0


def test_a_job_that_cannot_fit_in_free_memory_fails_before_it_starts(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session]
) -> None:
    spec = tiny_spec(**HUGE)
    assert estimate_job_memory(spec).total_bytes > 100 * 1024**3
    with session_maker() as session:
        job = jobs.submit_job(session, spec)

    done = wait_for_job(session_maker, job.id, timeout_s=30)

    assert done.status == "failed"
    assert done.error is not None
    assert done.error.startswith("the job needs an estimated ") and "GiB" in done.error
    assert "this host's RAM has" in done.error and "free" in done.error
    assert done.started_at is not None and done.finished_at is not None
    assert (done.finished_at - done.started_at).total_seconds() < 5.0


def test_a_running_job_is_cancelled_within_a_second(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as session:
        job = jobs.submit_job(session, tiny_spec(steps=1_000_000, seed=33))
    wait_for_job(session_maker, job.id, statuses={"running"})

    asked_at = utcnow()
    with session_maker() as session:
        jobs.cancel_job(session, job.id)
    done = wait_for_job(session_maker, job.id, timeout_s=15)

    assert done.status == "cancelled" and done.finished_at is not None
    assert (done.finished_at - asked_at).total_seconds() < 1.0


def test_a_queued_job_is_cancelled_at_once(session_maker: sessionmaker[Session]) -> None:
    with session_maker() as session:
        job = jobs.create_job(session, tiny_spec(seed=34))
        session.commit()
        asked_at = utcnow()
        done = jobs.cancel_job(session, job.id)

    assert done.status == "cancelled" and done.finished_at is not None
    assert (done.finished_at - asked_at).total_seconds() < 0.5


def test_a_job_over_the_servers_memory_cap_is_refused_at_submission(api: ApiServer) -> None:
    body = JobSpec.model_validate({**tiny_spec().model_dump(), **HUGE}).model_dump(mode="json")
    with api.client() as client:
        response = client.post("/api/v1/jobs", json=body)
        small = client.post("/api/v1/jobs", json=tiny_spec(seed=35).model_dump(mode="json"))

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    errors = detail if isinstance(detail, list) else detail.get("errors", [])
    assert any("this server accepts at most 32.00 GiB per job" in str(error) for error in errors)
    assert small.status_code == 202
    with api.client() as client:
        client.post(f"/api/v1/jobs/{small.json()['id']}/cancel")


@pytest.mark.parametrize("batch_size", [1, 100, 10_000])
def test_the_memory_estimate_grows_with_the_batch(batch_size: int) -> None:
    small = estimate_job_memory(tiny_spec(batch_size=1)).total_bytes
    estimate = estimate_job_memory(tiny_spec(batch_size=batch_size))

    assert estimate.total_bytes >= small
    assert set(estimate.parts) >= {"runtime", "parameters", "activations", "evaluation", "dataset"}
    # Affine 1's output and ReLU's mask (in place); Affine 2's output and its input's gradient; softmax's
    # scores and gradient, and three int64s (label, target, total) per sample.
    per_sample = (16 * 4 + 16) + (10 * 4 + 16 * 4) + (2 * 10 * 4 + 3 * 8)
    assert estimate.parts["activations"] == batch_size * per_sample
