"""A job whose pool process the kernel kills for memory fails at once, "killed for memory", with the figures.

A real `bpbench worker` runs in a real memory cgroup (v1 or v2, made by the test; needs root). Its job
passes the worker's fit check under the cgroup's first limit; once the job runs, the test lowers the limit
below what the job is about to allocate (as a neighbour taking memory would), and the kernel's OOM killer
ends the pool process. The worker's main process sees it die and fails the job on its first attempt,
instead of the reconciler's "stopped sending heartbeats" three attempts later.

The limit comes down while the job is provably on one of its small sizes: the worker writes every size's
progress message ("gemm N x N", written before N's matrices are drawn), and the test reads the message again
after lowering the limit. (A first version lowered it once the job was "running": the small sizes took about
half a second, and on a loaded CI host the test read the usage after the 4096 matrices were drawn, so no
limit was crossed and the job ran its 4096 products for over two minutes.)
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.core.config import Settings
from services.core.queue import RUN_JOB_TASK, make_celery
from services.jobs import service as jobs
from services.jobs.models import Job
from services.jobs.resources import estimate_job_memory
from services.jobs.spec import JobSpec
from tests.support.jobs import wait_for_job, wait_until
from tests.support.servers import CI, claimed_redis_database
from tests.support.workers import start_worker

MIB = 2**20
FIRST_LIMIT = 1200 * MIB  # room for the estimate beside the worker's own processes
ROOM_LEFT = 96 * MIB  # what the lowered limit leaves above the group's usage: less than the big matrices
SMALL_SIZES = list(range(256, 705, 32))  # 15 sizes of at most 11.3 MiB of matrices, about 0.15 s each
BIG = 4096  # then 4096 x 4096 float64: 384 MiB of matrices, estimated 672 MiB
OOM_JOB = JobSpec(
    kind="gemm",
    device="cpu",
    dtype="float64",
    gemm_sizes=[*SMALL_SIZES, BIG],
    timing={"warmup": 1, "window": 10, "min_repeats": 8, "max_repeats": 8, "target_cv": 0.5},
)
SMALL_MESSAGES = {f"gemm {n}x{n}" for n in SMALL_SIZES}


@dataclass(frozen=True)
class MemoryCgroup:
    """A memory cgroup made for the test: its directory and the names of its limit and usage files."""

    path: Path
    limit_file: str
    usage_file: str

    def set_limit(self, limit_bytes: int) -> None:
        (self.path / self.limit_file).write_text(str(limit_bytes))

    def usage(self) -> int:
        return int((self.path / self.usage_file).read_text())


@pytest.fixture
def memory_cgroup() -> Iterator[MemoryCgroup]:
    """A real memory cgroup (the v1 memory controller where mounted, else v2), removed afterwards."""
    root = Path("/sys/fs/cgroup")
    name = f"bpbench-oom-{uuid.uuid4().hex[:8]}"
    if (root / "memory").is_dir():
        group = MemoryCgroup(root / "memory" / name, "memory.limit_in_bytes", "memory.usage_in_bytes")
    else:
        group = MemoryCgroup(root / name, "memory.max", "memory.current")
    try:
        group.path.mkdir()
        group.set_limit(FIRST_LIMIT)
    except OSError as exc:
        reason = f"cannot create a memory cgroup here ({exc.strerror}; needs root and a memory controller)"
        if CI:
            pytest.fail(reason)
        pytest.skip(reason)
    yield group
    for _ in range(50):  # the worker's processes leave the group as they exit
        with contextlib.suppress(OSError):
            group.path.rmdir()
            return
        time.sleep(0.2)


def progress_message(session_maker: sessionmaker[Session], job_id: str) -> str | None:
    with session_maker() as session:
        job = session.get(Job, job_id)
        return job.progress_message if job is not None else None


def test_a_job_killed_by_the_oom_killer_fails_at_once_saying_killed_for_memory(
    memory_cgroup: MemoryCgroup,
    service_settings: Settings,
    session_maker: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    estimate = estimate_job_memory(OOM_JOB).total_bytes
    enter = f'echo $$ > {memory_cgroup.path}/cgroup.procs && exec "$@"'
    # A broker of its own: the session's shared worker serves the same device's queues on the shared one.
    with claimed_redis_database() as private_broker:
        worker = start_worker(
            service_settings.database_url,
            private_broker,
            tmp_path,
            wrapper=["sh", "-c", enter, "sh"],
            env={"BPBENCH_PROGRESS_INTERVAL_S": "0.001"},  # every size's message reaches the database
        )
        try:
            assert estimate < FIRST_LIMIT - memory_cgroup.usage(), "the fit check would refuse the job"
            with session_maker() as session:
                job = jobs.create_job(session, OOM_JOB, target_device_id=worker.device_id)
                session.commit()
            client = make_celery(service_settings.model_copy(update={"broker_url": private_broker}))
            client.send_task(
                RUN_JOB_TASK, args=[job.id], task_id=job.id, queue=job.queue, routing_key=job.queue
            )
            client.close()
            wait_until(
                lambda: progress_message(session_maker, job.id) in SMALL_MESSAGES,
                60,
                f"job {job.id} to start its small sizes",
                interval_s=0.02,
            )
            lowered = memory_cgroup.usage() + ROOM_LEFT
            memory_cgroup.set_limit(lowered)
            after = progress_message(session_maker, job.id)
            assert after in SMALL_MESSAGES, (
                f"the job was at {after!r} when the limit came down: it may have drawn its {BIG} matrices "
                "before the usage was read, and the test proves nothing",
                worker.log(),
            )
            try:
                done = wait_for_job(session_maker, job.id, timeout_s=120)
            except pytest.fail.Exception as exc:
                raise AssertionError(
                    (str(exc), progress_message(session_maker, job.id), lowered, worker.log())
                ) from None
            alive = worker.process.poll() is None
        finally:
            # Room again, so the worker's new pool process and its shutdown are not squeezed at the limit.
            memory_cgroup.set_limit(FIRST_LIMIT)
            worker.stop()
    assert (done.status, done.attempts) == ("failed", 1), (done.error, worker.log())
    assert done.error is not None and done.error.startswith("killed for memory: last seen using "), done.error
    assert f"of {lowered / MIB:.1f} MiB allowed" in done.error
    assert f"estimate {estimate / MIB:.1f} MiB" in done.error
    assert (
        "the kernel's out-of-memory killer ended its process (1 OOM kill(s) counted in its cgroup)"
        in done.error
    )
    assert alive, "the worker's main process died with its pool process"
