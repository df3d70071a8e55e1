"""A real `bpbench worker` in a memory cgroup refuses a job that fits the host's RAM but not the cgroup."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.core.config import Settings
from services.core.queue import RUN_JOB_TASK, make_celery
from services.jobs import service as jobs
from services.jobs.resources import estimate_job_memory
from services.jobs.spec import JobSpec
from tests.support.jobs import wait_for_job
from tests.support.servers import CI, claimed_redis_database
from tests.support.workers import start_worker

MIB = 2**20
CGROUP_LIMIT = 384 * MIB
# 546 MiB by the estimate: over the cgroup's limit, far under this host's free RAM.
OVER_THE_CGROUP = JobSpec(kind="gemm", device="cpu", dtype="float32", gemm_sizes=[5120, 256])


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A real v1 memory cgroup limited to `CGROUP_LIMIT` (root and the v1 hierarchy), removed afterwards."""
    base = Path("/sys/fs/cgroup/memory")
    directory = base / f"bpbench-worker-{uuid.uuid4().hex[:8]}"
    try:
        directory.mkdir()
        (directory / "memory.limit_in_bytes").write_text(str(CGROUP_LIMIT))
    except OSError as exc:
        reason = f"cannot create a v1 memory cgroup here ({exc.strerror}; needs root and the v1 hierarchy)"
        if CI:
            pytest.fail(reason)
        pytest.skip(reason)
    yield directory
    for _ in range(50):  # the worker's processes leave the cgroup as they exit
        with contextlib.suppress(OSError):
            directory.rmdir()
            return
        time.sleep(0.2)


def test_a_worker_in_a_small_cgroup_fails_a_job_over_its_limit_naming_the_limit(
    memory_cgroup: Path,
    service_settings: Settings,
    session_maker: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    estimate = estimate_job_memory(OVER_THE_CGROUP).total_bytes
    assert CGROUP_LIMIT < estimate < psutil.virtual_memory().available
    enter = f'echo $$ > {memory_cgroup}/cgroup.procs && exec "$@"'
    # A broker of its own: the session's shared worker serves the same device's queues on the shared one.
    with claimed_redis_database() as private_broker:
        worker = start_worker(
            service_settings.database_url, private_broker, tmp_path, wrapper=["sh", "-c", enter, "sh"]
        )
        try:
            assert str(worker.process.pid) in (memory_cgroup / "cgroup.procs").read_text().split()
            with session_maker() as session:
                job = jobs.create_job(session, OVER_THE_CGROUP, target_device_id=worker.device_id)
                session.commit()
            client = make_celery(service_settings.model_copy(update={"broker_url": private_broker}))
            client.send_task(
                RUN_JOB_TASK, args=[job.id], task_id=job.id, queue=job.queue, routing_key=job.queue
            )
            client.close()
            done = wait_for_job(session_maker, job.id, timeout_s=60)
        finally:
            worker.stop()
    assert (done.status, done.worker_name) == ("failed", worker.name), done.error
    assert done.error is not None and done.error.startswith("the job needs an estimated ")
    assert "this worker's cgroup memory limit (384.0 MiB" in done.error
