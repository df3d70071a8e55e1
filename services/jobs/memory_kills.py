"""A job whose pool process was killed for memory: what the worker's main process watches, and the rule.

A job runs in a pool process of its worker. When the kernel kills that process for memory (the OOM killer,
at a cgroup's limit or the host's), nothing in the process can say so: its job's heartbeat just stops, and
the reconciler could only requeue it, "stopped sending heartbeats", to be killed again. The worker's main
process outlives it, so it watches each job's pool process from the delivery's acceptance (Celery's
request callbacks, `workers/job_request.py`), in one thread (`MemoryWatch`):

- the memory cgroup of the pool process and its OOM-kill count (`services.devices.memory`: v2
  `memory.events`, v1 `memory.oom_control`; the host's `/proc/vmstat` where there is no group), read at the
  start and again when the process is found dead;
- every `SAMPLE_INTERVAL_S`: the process's resident set, and the bound it lives under (its tightest cgroup
  limit and that group's usage, or the host's RAM in use).

The rule (`memory_kill_message`): the process ended by SIGKILL (or by a signal billiard did not name), and
either the OOM killer counted a kill in its group since the delivery began, or the last sample had the
bound at least `AT_THE_LIMIT` full. Then the job fails at once (`jobs.fail_lost_attempt`, fenced by the
worker's name and the delivery's start) with "killed for memory: last seen using ... of ... allowed ...;
estimate ...". It is not run again: the same job would be killed again. Any other death is left to the
reconciler, as before.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from engine.kinds.base import mib
from services.core.config import Settings
from services.core.db import session_factory
from services.devices.memory import (
    CGROUP_ROOT,
    MemoryBound,
    MemoryCgroup,
    host_oom_kills,
    memory_cgroup_of,
    process_memory_bound,
)
from services.jobs import service as jobs
from services.jobs.resources import estimate_job_memory
from services.jobs.spec import JobSpec

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 0.25
AT_THE_LIMIT = 0.9  # a bound this full when the process was last seen: killed at the limit
FORGET_AFTER_S = 60.0  # a dead process nobody asked about is dropped after this long
START_SLACK_S = 1.0  # the attempt's `started_at` (written by the pool process) vs the acceptance time
_REDUCE = (
    "reduce batch_size, the layer widths, gemm_sizes or synthetic_samples, or give the worker more memory"
)


@dataclass
class WatchedProcess:
    """One job's pool process as the main process saw it: where it lives and its last sample."""

    job_id: str
    pid: int
    accepted_at: datetime  # when the pool process took the delivery (its attempt starts after)
    cgroup: MemoryCgroup | None
    oom_kills_before: int | None
    rss_bytes: int = 0
    bound: MemoryBound | None = None
    dead_since: float | None = None  # monotonic

    def oom_kills_since(self) -> int | None:
        """OOM kills counted where this process lived since the delivery began (None: unknown)."""
        after = self.cgroup.oom_kills() if self.cgroup is not None else host_oom_kills()
        if after is None or self.oom_kills_before is None:
            return None
        return after - self.oom_kills_before

    @property
    def counted_in(self) -> str:
        return "its cgroup" if self.cgroup is not None else "this host"


class MemoryWatch:
    """The main process's watch over its pool processes' memory, one thread for all of them."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S, root: Path = CGROUP_ROOT) -> None:
        self._interval_s = interval_s
        self._root = root
        self._watched: dict[int, WatchedProcess] = {}  # by pid: a pool process runs one job at a time
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, pid: int, job_id: str, accepted_at: datetime) -> None:
        """Watch pool process `pid`, which has just taken job `job_id`'s delivery."""
        cgroup = memory_cgroup_of(pid, self._root)
        before = cgroup.oom_kills() if cgroup is not None else host_oom_kills()
        watched = WatchedProcess(job_id, pid, accepted_at, cgroup, before)
        self._sample(watched)
        with self._lock:
            self._watched[pid] = watched
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)
                self._thread.start()

    def lost(self, pid: int, job_id: str) -> WatchedProcess | None:
        """What was seen of pool process `pid` running job `job_id`, which died; the watch ends."""
        with self._lock:
            watched = self._watched.get(pid)
            if watched is None or watched.job_id != job_id:
                return None
            del self._watched[pid]
            return watched

    def _sample(self, watched: WatchedProcess) -> None:
        try:
            rss = int(psutil.Process(watched.pid).memory_info().rss)
        except psutil.Error:
            rss = 0
        bound = process_memory_bound(watched.pid, self._root)
        if rss == 0 or bound is None:  # gone (or a zombie): keep the last sample of the living process
            watched.dead_since = watched.dead_since or time.monotonic()
            return
        watched.rss_bytes, watched.bound = rss, bound

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                for pid in [
                    p
                    for p, w in self._watched.items()
                    if w.dead_since and now - w.dead_since > FORGET_AFTER_S
                ]:
                    del self._watched[pid]
                alive = [w for w in self._watched.values() if w.dead_since is None]
            for watched in alive:
                self._sample(watched)
            time.sleep(self._interval_s)


_watch: MemoryWatch | None = None


def memory_watch() -> MemoryWatch:
    """This process's watch (the worker's main process), made on first use."""
    global _watch
    if _watch is None:
        _watch = MemoryWatch()
    return _watch


def exit_signal_of(error: BaseException) -> int | None:
    """The signal that ended a pool process, from billiard's `WorkerLostError` ("signal 9 (SIGKILL)")."""
    match = re.search(r"signal (\d+)", str(error))
    return int(match.group(1)) if match else None


def bound_at_death(watched: WatchedProcess) -> MemoryBound | None:
    """The bound the process died under: its group's own limit read now (the group outlives the process,
    and a limit lowered after the last sample is the one that killed it) where that is tighter than the
    last sample's; else the last sample's."""
    cgroup, last = watched.cgroup, watched.bound
    limit = cgroup.limit_bytes() if cgroup is not None else None
    if cgroup is None or limit is None or (last is not None and last.limit_bytes <= limit):
        return last
    used = last.used_bytes if last is not None else watched.rss_bytes
    return MemoryBound(used, limit, f"the cgroup memory limit at {cgroup.path}")


def memory_kill_message(
    watched: WatchedProcess, exit_signal: int | None, estimate_bytes: int | None
) -> str | None:
    """The job's error if its pool process was killed for memory (the module docstring's rule), else None."""
    if exit_signal is not None and exit_signal != signal.SIGKILL:
        return None
    kills = watched.oom_kills_since()
    bound = watched.bound
    at_the_limit = bound is not None and bound.used_bytes >= AT_THE_LIMIT * bound.limit_bytes
    if not (kills or at_the_limit):
        return None
    limit = (
        f" of {mib(bound.limit_bytes)} allowed ({mib(bound.used_bytes)} in use under {bound.where})"
        if bound
        else ""
    )
    estimate = f"; estimate {mib(estimate_bytes)}" if estimate_bytes is not None else ""
    how = (
        f"the kernel's out-of-memory killer ended its process ({kills} OOM kill(s) counted in "
        f"{watched.counted_in})"
        if kills
        else "its process was killed (SIGKILL) with its memory at the limit"
    )
    seen = f"last seen using {mib(watched.rss_bytes)}{limit}{estimate}"
    return f"killed for memory: {seen}; {how}; not run again ({_REDUCE})"


def record_lost_process(
    settings: Settings, worker_name: str, watched: WatchedProcess, exit_signal: int | None
) -> str | None:
    """Fail the job of a pool process killed for memory; its error, or None (not a memory kill, or the
    job is no longer that attempt: the reconciler handles it as before)."""
    factory = session_factory(settings)
    estimate_bytes: int | None = None
    with factory() as session:
        job = jobs.get_job(session, watched.job_id)
        if job is not None:
            try:
                estimate_bytes = estimate_job_memory(
                    JobSpec.model_validate(job.spec), read_dataset_files=True
                ).total_bytes
            except ValueError:
                estimate_bytes = None
        session.rollback()
    watched.bound = bound_at_death(watched)
    message = memory_kill_message(watched, exit_signal, estimate_bytes)
    if message is None:
        return None
    started_after = watched.accepted_at - timedelta(seconds=START_SLACK_S)
    with factory() as session:
        failed = jobs.fail_lost_attempt(
            session, watched.job_id, message, worker_name=worker_name, started_after=started_after
        )
    if not failed:
        return None
    log.warning("job %s: %s", watched.job_id, message)
    return message


def accepted_at(time_start: float) -> datetime:
    """Celery's `time_start` (seconds since the epoch) as a UTC datetime."""
    return datetime.fromtimestamp(time_start, UTC)
