"""How the worker's main process tells a pool process killed for memory, and what it records.

The rule is read from real cgroup files the tests write (v1 `memory.oom_control`, v2 `memory.events`), the
watch from a real child process, the record from a real database. The whole path through a real worker
in a real cgroup is `tests/workers/test_killed_for_memory.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from billiard.common import human_status
from billiard.exceptions import WorkerLostError
from sqlalchemy.orm import Session

from services.core.db import utcnow
from services.devices.memory import MemoryBound, MemoryCgroup, memory_cgroup_of
from services.devices.service import register_device
from services.jobs import service as jobs
from services.jobs.memory_kills import (
    MemoryWatch,
    WatchedProcess,
    bound_at_death,
    exit_signal_of,
    memory_kill_message,
)
from tests.support.jobs import tiny_spec

MIB = 2**20
LIMIT = MemoryBound(used_bytes=7_990 * MIB, limit_bytes=8_000 * MIB, where="the cgroup memory limit at /x")


def _v1_group(tmp_path: Path, oom_kills: int) -> MemoryCgroup:
    (tmp_path / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kills}\n")
    return MemoryCgroup(tmp_path, 1)


def _watched(group: MemoryCgroup | None, bound: MemoryBound | None = LIMIT) -> WatchedProcess:
    before = group.oom_kills() if group is not None else None
    return WatchedProcess("job", 1, utcnow(), group, before, rss_bytes=7_900 * MIB, bound=bound)


def test_a_sigkill_with_an_oom_kill_counted_in_its_v1_cgroup_is_a_memory_kill(tmp_path: Path) -> None:
    watched = _watched(_v1_group(tmp_path, 3))
    _v1_group(tmp_path, 4)

    message = memory_kill_message(watched, signal.SIGKILL, 4_700 * MIB)
    assert message == (
        "killed for memory: last seen using 7.71 GiB of 7.81 GiB allowed (7.80 GiB in use under the cgroup "
        "memory limit at /x); estimate 4.59 GiB; the kernel's out-of-memory killer ended its process "
        "(1 OOM kill(s) counted in its cgroup); not run again (reduce batch_size, the layer widths, "
        "gemm_sizes or synthetic_samples, or give the worker more memory)"
    )


def test_an_oom_kill_counted_in_a_v2_cgroups_events_is_a_memory_kill_far_below_the_limit(
    tmp_path: Path,
) -> None:
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\noom_group_kill 0\n")
    watched = _watched(MemoryCgroup(tmp_path, 2), MemoryBound(100 * MIB, 8_000 * MIB, "this host's RAM"))
    events.write_text("low 0\nhigh 0\nmax 30\noom 2\noom_kill 1\noom_group_kill 0\n")

    message = memory_kill_message(watched, signal.SIGKILL, None)
    assert (
        message is not None
        and "of 7.81 GiB allowed (100.0 MiB in use under this host's RAM); the " in message
    )


def test_a_sigkill_at_the_limit_is_a_memory_kill_where_no_counter_says_so(tmp_path: Path) -> None:
    watched = _watched(MemoryCgroup(tmp_path, 2))  # no memory.events: the kernel says nothing

    message = memory_kill_message(watched, signal.SIGKILL, 4_700 * MIB)
    assert message is not None
    assert "; estimate 4.59 GiB; its process was killed (SIGKILL) with its memory at the limit; " in message


def test_a_sigkill_far_below_the_limit_with_no_oom_kill_is_left_to_the_reconciler(tmp_path: Path) -> None:
    watched = _watched(_v1_group(tmp_path, 0), MemoryBound(2_000 * MIB, 8_000 * MIB, "this host's RAM"))
    assert memory_kill_message(watched, signal.SIGKILL, 4_700 * MIB) is None


def test_a_process_that_crashed_is_no_memory_kill_whatever_the_counter(tmp_path: Path) -> None:
    watched = _watched(_v1_group(tmp_path, 0))
    _v1_group(tmp_path, 1)
    assert memory_kill_message(watched, signal.SIGSEGV, 4_700 * MIB) is None


def test_the_exit_signal_is_read_from_billiards_worker_lost_error() -> None:
    lost = WorkerLostError(f"Worker exited prematurely: {human_status(-9)} Job: 3.")
    assert exit_signal_of(lost) == signal.SIGKILL
    assert exit_signal_of(WorkerLostError(f"Worker exited prematurely: {human_status(1)}.")) is None


def test_the_watch_keeps_the_last_sample_of_a_process_that_died() -> None:
    holds = "import sys; b = b'x' * (64 * 2**20); print('ready', flush=True); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", holds], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        watch = MemoryWatch(interval_s=0.05)
        watch.watch(child.pid, "job-1", utcnow())
        time.sleep(0.2)
        assert watch.lost(child.pid, "another job") is None  # a delivery of another job: not this one's
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        time.sleep(0.2)  # samples of the dead process keep the living one's figures
        watched = watch.lost(child.pid, "job-1")
    finally:
        child.kill()
    assert watched is not None and watched.rss_bytes > 64 * MIB and watched.dead_since is not None
    assert watched.bound is not None and watched.bound.limit_bytes > watched.rss_bytes
    assert watched.cgroup == memory_cgroup_of(os.getpid())  # the child's group is the test's
    assert watched.oom_kills_since() == 0
    assert watch.lost(child.pid, "job-1") is None  # asked once


def test_a_lost_attempt_is_failed_only_for_its_worker_and_delivery(db_session: Session) -> None:
    device = register_device(
        db_session, {"device": "cpu", "cpu_model": f"CPU {uuid.uuid4().hex}", "blas": []}
    )
    job = jobs.create_job(db_session, tiny_spec())
    db_session.commit()
    before_the_claim = utcnow() - timedelta(seconds=1)
    claim = jobs.claim_job(db_session, job.id, worker_name="w1@test", device_id=device.id)
    assert claim is not None
    after_the_claim = utcnow() + timedelta(seconds=1)

    assert not jobs.fail_lost_attempt(
        db_session, job.id, "x", worker_name="w2@test", started_after=before_the_claim
    )
    assert not jobs.fail_lost_attempt(
        db_session, job.id, "x", worker_name="w1@test", started_after=after_the_claim
    )
    assert jobs.fail_lost_attempt(
        db_session, job.id, "killed for memory: ...", worker_name="w1@test", started_after=before_the_claim
    )
    db_session.expire_all()  # the row as the database has it now
    row = jobs.get_job(db_session, job.id)
    assert row is not None and (row.status, row.error, row.attempts) == (
        "failed",
        "killed for memory: ...",
        1,
    )


def test_a_limit_lowered_after_the_last_sample_is_the_one_the_message_names(tmp_path: Path) -> None:
    # Sampled under an 8000 MiB bound; the group's limit was then lowered to 300 MiB, which killed it.
    group = _v1_group(tmp_path, 0)
    (tmp_path / "memory.limit_in_bytes").write_text(f"{300 * MIB}\n")
    assert group.limit_bytes() == 300 * MIB
    bound = bound_at_death(_watched(group))
    assert bound == MemoryBound(7_990 * MIB, 300 * MIB, f"the cgroup memory limit at {tmp_path}")
    # A looser or absent limit now leaves the last sample's bound as it was.
    (tmp_path / "memory.limit_in_bytes").write_text(f"{9_000 * MIB}\n")
    assert bound_at_death(_watched(group)) == LIMIT
    (tmp_path / "memory.limit_in_bytes").write_text(f"{2**63 - 4096}\n")  # v1's "no limit"
    assert group.limit_bytes() is None and bound_at_death(_watched(group)) == LIMIT
    v2 = MemoryCgroup(tmp_path, 2)
    (tmp_path / "memory.max").write_text("max\n")
    assert v2.limit_bytes() is None
