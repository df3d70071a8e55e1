"""A job's log lines and its partial loss curve, from a real worker through the real API, on both databases.

The worker stores what it logs about a job (per attempt) and the train kind's step and loss reports;
`GET /api/v1/jobs/{id}/logs` and `/loss-curve` serve them while the job runs and after.
"""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from services.jobs import service as jobs
from tests.support import apiserver
from tests.support.apiserver import ApiServer
from tests.support.jobs import tiny_spec, wait_for_job, wait_until
from tests.support.workers import WorkerProcess

api = apiserver.api
TIMEOUT_S = 90.0


def complete_log(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Follow the job's log as a client does (`?after=`) until the API says it is complete."""
    lines: list[dict[str, Any]] = []
    after = 0

    def step() -> dict[str, Any] | None:
        nonlocal after
        page: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}/logs", params={"after": after}).json()
        lines.extend(page["items"])
        after = page["last_seq"]
        return page if page["complete"] else None

    last = wait_until(step, TIMEOUT_S, f"the log of job {job_id} to be complete", interval_s=0.5)
    return {**last, "items": lines}


def test_the_lines_of_a_job_the_worker_ran_are_served_with_their_attempt(
    api: ApiServer, cpu_worker: WorkerProcess
) -> None:
    with api.client() as client:
        job = client.post("/api/v1/jobs", json=tiny_spec(steps=200).model_dump(mode="json")).json()
        log = complete_log(client, job["id"])
        done = client.get(f"/api/v1/jobs/{job['id']}").json()
        again = client.get(f"/api/v1/jobs/{job['id']}/logs", params={"after": log["items"][0]["seq"]}).json()
    assert (log["status"], done["status"]) == ("succeeded", "succeeded")
    messages = [line["message"] for line in log["items"]]
    assert messages[0] == f"job {job['id']}: attempt 1 started on {cpu_worker.name}"
    samples_per_s = done["result"]["samples_per_s"]
    assert messages[-1] == f"job {job['id']}: succeeded ({samples_per_s} samples/s)"
    assert {line["attempt"] for line in log["items"]} == {1}
    assert {line["level"] for line in log["items"]} == {"INFO"}
    assert log["items"][0]["logger"] == "services.jobs.runner"
    seqs = [line["seq"] for line in log["items"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # `after` gives the lines after that one only.
    assert [line["seq"] for line in again["items"]] == seqs[1:]
    assert again["last_seq"] == seqs[-1]


def test_the_lines_of_a_second_attempt_say_attempt_2(
    api: ApiServer, cpu_worker: WorkerProcess, session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as session:
        job = jobs.create_job(session, tiny_spec())
        session.commit()
        # A first attempt whose worker vanished (claimed, then taken back as the reconciler does) ...
        first = jobs.claim_job(session, job.id, worker_name="vanished@test", device_id=cpu_worker.device_id)
        assert first is not None and first.attempt == 1
        assert jobs.requeue_job(session, job.id, attempt=1, reason="worker lost", max_attempts=3) == "queued"
        # ... then the real worker runs it again.
        jobs.publish(session, job)
    assert wait_for_job(session_maker, job.id, timeout_s=TIMEOUT_S).status == "succeeded"
    with api.client() as client:
        log = complete_log(client, job.id)
    assert log["items"], "no line stored"
    assert {line["attempt"] for line in log["items"]} == {2}
    assert log["items"][0]["message"] == f"job {job.id}: attempt 2 started on {cpu_worker.name}"


def test_a_running_train_job_serves_its_loss_so_far(api: ApiServer, cpu_worker: WorkerProcess) -> None:
    # Long enough to be read while it runs; cancelled once seen.
    spec = tiny_spec(steps=200_000, loss_samples=10_000, time_limit_s=120)
    with api.client() as client:
        job = client.post("/api/v1/jobs", json=spec.model_dump(mode="json")).json()

        def running_curve() -> dict[str, Any] | None:
            curve: dict[str, Any] = client.get(f"/api/v1/jobs/{job['id']}/loss-curve").json()
            return curve if curve["status"] == "running" and len(curve["points"]) >= 3 else None

        try:
            curve = wait_until(running_curve, TIMEOUT_S, "3 loss points while it runs", interval_s=0.3)
        finally:
            client.post(f"/api/v1/jobs/{job['id']}/cancel")
        cancelled = wait_until(
            lambda: (doc := client.get(f"/api/v1/jobs/{job['id']}").json())["status"] == "cancelled" and doc,
            TIMEOUT_S,
            "the cancel",
        )
    assert (curve["attempt"], curve["total_steps"]) == (1, 200_000)
    steps = [step for step, _ in curve["points"]]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and 0 < steps[-1] < 200_000
    assert all(loss > 0 for _, loss in curve["points"])
    assert cancelled["progress_message"] == "cancelled while running"
