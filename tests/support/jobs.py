"""Jobs in tests: a tiny spec that runs in well under a second, and waiting for a job or a condition."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from harness import processes
from services.jobs.models import FINAL_STATUSES, Job
from services.jobs.spec import JobSpec

JOB_TIMEOUT_S = 60.0


T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None], timeout_s: float, what: str, *, interval_s: float = 0.1
) -> T:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout_s` naming `what`."""
    try:
        return processes.wait_until(predicate, timeout_s, what, interval_s)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def wait_for_job(
    session_maker: sessionmaker[Session],
    job_id: str,
    *,
    statuses: frozenset[str] | set[str] = FINAL_STATUSES,
    timeout_s: float = JOB_TIMEOUT_S,
) -> Job:
    """Wait until the job's status is one of `statuses` (default: final); returns the job row."""

    def current() -> Job | None:
        with session_maker() as session:
            job = session.get(Job, job_id)
            return job if job is not None and job.status in statuses else None

    return wait_until(current, timeout_s, f"job {job_id} to reach {sorted(statuses)}")


def tiny_spec(**overrides: Any) -> JobSpec:
    """A train job that takes well under a second: 20 steps of a small MLP on synthetic data."""
    doc: dict[str, Any] = {
        "kind": "train",
        "device": "cpu",
        "model": {"name": "mlp", "layers": [784, 16, 10]},
        "dataset": "synthetic",
        "synthetic_samples": 256,
        "steps": 20,
        "batch_size": 32,
        "timing": {"warmup": 2, "window": 3, "min_repeats": 3, "max_repeats": 5},
    }
    doc.update(overrides)
    return JobSpec.model_validate(doc)


# A job that fails on the worker: ten ReLU layers with weights of std 10 and lr 10 overflow float32 at the
# second step (found by trying), and the error it is recorded with.
DIVERGING: dict[str, Any] = {
    "model": {"name": "mlp", "layers": [16, *[64] * 10, 10], "init": "std", "weight_init_std": 10},
    "optimizer": {"name": "sgd", "lr": 10},
    "steps": 50,
}
DIVERGED_ERROR = "diverged at step 2"


# The reconciler's production timing, for tests that judge jobs as a deployed reconciler would.
RECONCILER_TIMING: dict[str, Any] = {
    "worker_dead_after_s": 15.0,
    "queued_republish_after_s": 60.0,
    "max_attempts": 3,
}


@contextlib.contextmanager
def unconsumed_queue(broker_url: str, prefix: str) -> Iterator[str]:
    """The name of a device queue no worker consumes (`device.<prefix>-<random>`), emptied afterwards."""
    name = f"device.{prefix}-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        client = redis.Redis.from_url(broker_url)
        client.delete(name)
        client.close()
