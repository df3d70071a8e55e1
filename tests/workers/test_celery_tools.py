"""Celery's own tools, run as an operator runs them, reach bpbench's app and its real `bpbench worker`.

`celery -A workers` (and `-A services.core.queue`) loads the app lazily built from the `BPBENCH_*` settings;
the task id of every job is its job id, and the worker sends task events, so `celery inspect` and
`celery events` name jobs by their own ids and show a failed job as a failed task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from harness.processes import PROJECT_ROOT
from services.core.config import Settings
from services.core.queue import RUN_JOB_TASK
from services.jobs import service as jobs
from tests.support.celery_cli import run_celery, running_celery
from tests.support.jobs import DIVERGED_ERROR, DIVERGING, tiny_spec, wait_for_job, wait_until
from tests.support.workers import WorkerProcess


def test_importing_the_workers_package_builds_no_app_and_reads_no_settings() -> None:
    # Settings that would be refused if read: importing the package and its modules must not read them.
    program = (
        "import json, workers, workers.main, workers.tasks\n"
        "from workers import tasks\n"
        "import services.core.queue as queue\n"
        "from services.core.config import get_settings\n"
        "print(json.dumps([queue._app is not None, get_settings.cache_info().currsize]))\n"
    )
    env = {**os.environ, "BPBENCH_BROKER_URL": "bogus://not-a-broker", "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", program],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [False, 0]


@pytest.mark.parametrize("app_path", ["workers", "services.core.queue"])
def test_celery_inspect_ping_through_the_app_path_gets_a_pong_from_the_bpbench_worker(
    app_path: str, cpu_worker: WorkerProcess, service_settings: Settings
) -> None:
    done = run_celery(
        service_settings, "-A", app_path, "inspect", "ping", "--destination", cpu_worker.name, "--json"
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {cpu_worker.name: {"ok": "pong"}}


def test_celery_inspect_query_task_finds_a_running_job_by_its_job_id(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session], service_settings: Settings
) -> None:
    with session_maker() as session:
        job = jobs.submit_job(session, tiny_spec(steps=1_000_000, seed=51))
    wait_for_job(session_maker, job.id, statuses={"running"})
    try:
        done = run_celery(
            service_settings, "-A", "workers", "inspect", "query_task", job.id, "--json",
            "--destination", cpu_worker.name,
        )  # fmt: skip
    finally:
        with session_maker() as session:
            jobs.cancel_job(session, job.id)
        wait_for_job(session_maker, job.id)

    assert done.returncode == 0, done.stderr
    state, request = json.loads(done.stdout)[cpu_worker.name][job.id]
    assert (state, request["id"], request["name"], request["args"]) == (
        "active",
        job.id,
        RUN_JOB_TASK,
        [job.id],
    )


def test_celery_events_shows_a_succeeded_job_and_a_failed_job_with_its_error_under_their_job_ids(
    cpu_worker: WorkerProcess,
    session_maker: sessionmaker[Session],
    service_settings: Settings,
    tmp_path: Path,
) -> None:
    with running_celery(
        service_settings, tmp_path / "events.log", "-A", "workers", "events", "--dump"
    ) as dump:
        # The worker's heartbeat reaching the dump says it is listening before anything is sent.
        wait_until(lambda: cpu_worker.name in dump.output(), 30, "the event dump to hear the worker")
        with session_maker() as session:
            succeeding = jobs.submit_job(session, tiny_spec(seed=52))
            failing = jobs.submit_job(session, tiny_spec(**DIVERGING))
        assert wait_for_job(session_maker, succeeding.id).status == "succeeded"
        assert wait_for_job(session_maker, failing.id).error == DIVERGED_ERROR
        lines = wait_until(
            lambda: (
                _task_lines(dump.output(), failing.id, "task failed")
                and _task_lines(dump.output(), succeeding.id, "task succeeded")
            ),
            30,
            "the dump to show both jobs finished",
        )

    output = dump.output()
    assert _task_lines(output, failing.id, "task sent") == []  # publishers send no event (see queue.py)
    assert len(_task_lines(output, failing.id, "task received")) == 1  # delivered once
    assert len(_task_lines(output, failing.id, "task started")) == 1
    (failed,) = _task_lines(output, failing.id, "task failed")
    assert f"exception=JobFailed('{DIVERGED_ERROR}')" in failed
    (succeeded,) = _task_lines(output, succeeding.id, "task succeeded")
    assert "result='succeeded'" in succeeded
    assert lines and not _task_lines(output, failing.id, "task succeeded")


def _task_lines(output: str, job_id: str, event: str) -> list[str]:
    """The dump's lines of this event (e.g. "task failed") about this job's task."""
    return [line for line in output.splitlines() if f" {event}: " in line and job_id in line]
