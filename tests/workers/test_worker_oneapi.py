"""A real `bpbench worker --device oneapi:opencl:cpu:0` runs parity and training jobs from its queue.

Skipped where the oneapi extra is not installed; a failure under CI=true (CI installs it).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.jobs import service as jobs
from services.results.models import Result
from tests.support.jobs import tiny_spec, wait_for_job
from tests.support.needs import missing
from tests.support.workers import WorkerProcess

DEVICE = "oneapi:opencl:cpu:0"


@pytest.fixture
def oneapi_worker(
    worker_factory: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch
) -> WorkerProcess:
    if importlib.util.find_spec("dpnp") is None:
        missing("the oneapi extra (dpnp) is not installed")
    # Neither variable in the worker's environment: it finds the pip runtime's device and pins itself.
    monkeypatch.delenv("OCL_ICD_FILENAMES", raising=False)
    monkeypatch.delenv("ONEAPI_DEVICE_SELECTOR", raising=False)
    return worker_factory(device=DEVICE)


def _result(maker: sessionmaker[Session], job_id: str) -> Any:
    with maker() as session:
        return session.scalars(select(Result).where(Result.job_id == job_id)).one()


def test_a_oneapi_worker_serves_its_backends_queue_and_runs_parity_and_training(
    oneapi_worker: WorkerProcess, session_maker: sessionmaker[Session]
) -> None:
    assert "oneapi" in oneapi_worker.queues and "cpu" not in oneapi_worker.queues
    with session_maker() as session:
        parity = jobs.submit_job(session, tiny_spec(kind="parity", device=DEVICE, dtype="float64"))
        train = jobs.submit_job(session, tiny_spec(device=DEVICE))
    assert (parity.queue, train.queue) == ("oneapi", "oneapi")

    for job in (parity, train):
        done = wait_for_job(session_maker, job.id)
        assert done.status == "succeeded", done.error
        assert (done.worker_name, done.device_id) == (oneapi_worker.name, oneapi_worker.device_id)

    checked = _result(session_maker, parity.id)
    assert checked.metrics["passed"] is True and len(checked.metrics["presets"]) == 7
    trained = _result(session_maker, train.id)
    assert trained.samples_per_s is not None and trained.samples_per_s > 0
    assert trained.metrics["steps"] == 20
