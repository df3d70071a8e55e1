"""Flower, started for real on the test broker, shows jobs as tasks under their job ids, in their true state.

`celery -A workers flower` with basic auth on a free loopback port; one job that succeeds and one that
diverges run on the session's real `bpbench worker`; Flower's HTTP API (`/api/tasks`) is read as a user
with credentials reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from harness.processes import free_port
from services.core.config import Settings
from services.core.queue import RUN_JOB_TASK
from services.jobs import service as jobs
from tests.support.celery_cli import running_celery
from tests.support.jobs import DIVERGED_ERROR, DIVERGING, tiny_spec, wait_for_job, wait_until
from tests.support.workers import WorkerProcess

USER, PASSWORD = "operator", "flower-test-password"


def test_flower_shows_a_succeeded_job_as_success_and_a_failed_job_as_failure_under_their_job_ids(
    cpu_worker: WorkerProcess,
    session_maker: sessionmaker[Session],
    service_settings: Settings,
    tmp_path: Path,
) -> None:
    port = free_port()
    flower_args = ["-A", "workers", "flower", "--address=127.0.0.1", f"--port={port}"]
    with running_celery(
        service_settings, tmp_path / "flower.log", *flower_args, f"--basic_auth={USER}:{PASSWORD}"
    ) as flower:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(USER, PASSWORD), timeout=10)

        def worker_seen() -> bool:
            assert flower.process.poll() is None, flower.output()
            try:  # the worker's heartbeat in Flower's event state: its event receiver is listening
                answer = client.get("/api/workers", params={"status": "true"})
            except httpx.TransportError:
                return False
            return answer.status_code == 200 and answer.json().get(cpu_worker.name) is True

        wait_until(worker_seen, 60, "Flower to hear the worker", interval_s=0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/api/tasks", timeout=10).status_code == 401
        with session_maker() as session:
            succeeding = jobs.submit_job(session, tiny_spec(seed=61))
            failing = jobs.submit_job(session, tiny_spec(**DIVERGING))
        assert wait_for_job(session_maker, succeeding.id).status == "succeeded"
        assert wait_for_job(session_maker, failing.id).status == "failed"

        def both_final() -> dict[str, Any] | None:
            tasks: dict[str, Any] = client.get("/api/tasks").json()
            states = {tasks.get(job_id, {}).get("state") for job_id in (succeeding.id, failing.id)}
            return tasks if states == {"SUCCESS", "FAILURE"} else None

        tasks = wait_until(both_final, 30, "Flower to show both jobs finished", interval_s=0.5)

    ok, bad = tasks[succeeding.id], tasks[failing.id]
    assert (ok["uuid"], ok["name"], ok["state"], ok["worker"]) == (
        succeeding.id,
        RUN_JOB_TASK,
        "SUCCESS",
        cpu_worker.name,
    )
    assert ok["result"] == "'succeeded'" and ok["exception"] is None
    assert (bad["uuid"], bad["name"], bad["state"], bad["worker"]) == (
        failing.id,
        RUN_JOB_TASK,
        "FAILURE",
        cpu_worker.name,
    )
    assert bad["exception"] == f"JobFailed('{DIVERGED_ERROR}')"
    # Progress as Flower draws it: each task was received and started before it ended.
    for task in (ok, bad):
        assert task["received"] is not None and task["received"] <= task["started"] <= task["timestamp"]
