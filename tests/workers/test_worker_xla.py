"""A real `bpbench worker --device xla:cpu:0` takes a train job from the `xla` queue and records its result
under a device whose stack is XLA (skipped without JAX, a failure under CI=true, which installs it)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.devices.models import Device
from services.jobs import service as jobs
from services.results.models import Result
from tests.support.jobs import tiny_spec, wait_for_job
from tests.support.needs import missing
from tests.support.workers import WorkerProcess


def test_an_xla_worker_runs_a_train_job_from_the_xla_queue(
    worker_factory: Callable[..., WorkerProcess], session_maker: sessionmaker[Session]
) -> None:
    if importlib.util.find_spec("jax") is None:
        missing("JAX is needed for an xla worker (pip install 'bpbench[xla]')")
    worker = worker_factory(device="xla:cpu:0")
    assert worker.queues[:1] == ["xla"]
    with session_maker() as session:
        job = jobs.submit_job(session, tiny_spec(device="xla:cpu:0"))
        assert job.queue == "xla"

    done = wait_for_job(session_maker, job.id)

    assert done.status == "succeeded", f"{done.error}\n{worker.log()}"
    assert (done.worker_name, done.device_id) == (worker.name, worker.device_id)
    with session_maker() as session:
        result = session.scalars(select(Result).where(Result.job_id == job.id)).one()
        device = session.get(Device, worker.device_id)
        assert device is not None and device.device_class == "xla"
    assert result.samples_per_s is not None and result.samples_per_s > 0
    assert result.metrics["steps"] == 20 and 0.0 <= result.metrics["test_accuracy"] <= 1.0
