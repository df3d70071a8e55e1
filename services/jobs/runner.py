"""The job runner: what a worker process does with one delivered job id, from claim to outcome.

Claim the job (`queued` -> `running`, one conditional UPDATE: a duplicate delivery does nothing), run
`engine.jobs.run_job`, then record the outcome through `services.jobs.service`:
- a result document -> result + trials + `succeeded`, one transaction, at most one result per job;
- `JobCancelled` -> `cancelled` (or `failed` when it was the time limit that stopped it);
- `JobDiverged` -> `failed` with `diverged at step N`; `JobError` -> `failed` with the engine's message;
- a job whose estimated memory exceeds the device's free memory -> `failed` before it starts;
- anything else -> `failed` with the exception's type and message (the traceback goes to the log).
Every write after the claim is fenced by the claim's attempt number, and a thread of the process that runs
the job writes its heartbeat (`jobs.heartbeat_at`), so the reconciler can tell a job whose process died.
The attempt's log lines and its loss points are stored as it runs (`services/joblogs/capture.py`).
The Celery task (`workers.tasks`) only hands the job id and the worker's identity to `execute_job`, and
turns the `JobOutcome` it returns into the task's state (a failed job is a failed task).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from engine.backend import free_memory_bytes, release_memory
from services.core.config import Settings, get_settings
from services.core.db import session_factory
from services.devices.memory import available_memory
from services.joblogs.capture import JobCapture
from services.jobs import service as jobs
from services.jobs.resources import JobTooLarge, check_fits
from services.jobs.spec import JobSpec

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerContext:
    """Who runs the jobs of this process: the worker's name, its device's id, and the engine device string."""

    name: str
    device_id: str
    engine_device: str  # "cpu", or "gpu:0" inside a worker pinned with CUDA_VISIBLE_DEVICES


class JobHeartbeats:
    """One daemon thread per process that sets each watched job's `heartbeat_at` every `interval_s`.

    It lives in the process that runs the jobs (the pool child), so when that process dies (killed child,
    Celery's hard time limit) the job's heartbeat stops even though the worker's own heartbeat goes on;
    the reconciler requeues a running job whose heartbeat is stale. A job is watched from its claim (which
    wrote `heartbeat_at`: the first beat is due one interval later) until it ends; a beat that finds the
    job no longer this attempt's drops it. The thread is started once, not per job, and sleeps while
    nothing is due.
    """

    def __init__(self, factory: sessionmaker[Session], interval_s: float) -> None:
        self._factory = factory
        self._interval_s = interval_s
        self._due: dict[tuple[str, int], float] = {}  # (job id, attempt) -> monotonic time of its next beat
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, claim: jobs.Claim) -> None:
        """Beat for this claimed job from one interval from now until `unwatch`."""
        with self._changed:
            self._due[(claim.job_id, claim.attempt)] = time.monotonic() + self._interval_s
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="job-heartbeats", daemon=True)
                self._thread.start()
            self._changed.notify()

    def unwatch(self, claim: jobs.Claim) -> None:
        """Stop beating for this job (a beat already being written may still land: it is fenced)."""
        with self._changed:
            self._due.pop((claim.job_id, claim.attempt), None)

    def watched(self) -> list[tuple[str, int]]:
        """The (job id, attempt) pairs beaten for now."""
        with self._changed:
            return sorted(self._due)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = [key for key, at in self._due.items() if at <= now]
                if not due:
                    soonest = min(self._due.values(), default=None)
                    self._changed.wait(None if soonest is None else soonest - now)
                    continue
                for key in due:
                    self._due[key] = now + self._interval_s
            for job_id, attempt in due:  # outside the lock: a slow database does not block `watch`
                self._beat(job_id, attempt)

    def _beat(self, job_id: str, attempt: int) -> None:
        try:
            with self._factory() as session:
                alive = jobs.touch_job(session, job_id, attempt=attempt)
        except Exception as exc:  # the database may be restarting; keep trying
            log.warning("job %s: heartbeat not recorded: %s", job_id, exc)
            return
        if not alive:  # finished, cancelled or taken over: nothing left to keep alive
            with self._changed:
                self._due.pop((job_id, attempt), None)


_heartbeats: dict[tuple[int, float], JobHeartbeats] = {}
_heartbeats_lock = threading.Lock()


def _forget_heartbeats_after_fork() -> None:
    # A forked pool process has none of its parent's threads, and a lock held at the fork stays held.
    global _heartbeats_lock
    _heartbeats.clear()
    _heartbeats_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_heartbeats_after_fork)


def job_heartbeats(factory: sessionmaker[Session], interval_s: float) -> JobHeartbeats:
    """This process's job heartbeat thread for this database and interval (a forked child makes its own)."""
    key = (id(factory), interval_s)
    with _heartbeats_lock:
        beats = _heartbeats.get(key)
        if beats is None:
            beats = _heartbeats[key] = JobHeartbeats(factory, interval_s)
        return beats


class JobMonitor:
    """The engine's `progress` and `should_stop` callbacks for one claimed job.

    Progress is written at most every `progress_interval_s` (100% comes with the result); the database is
    asked about cancellation at most every `cancel_poll_interval_s`; the time limit is checked on every call.
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        claim: jobs.Claim,
        settings: Settings,
        on_report: Callable[[float, str], None] | None = None,
    ) -> None:
        self._session = factory()
        self._claim = claim
        self._settings = settings
        self._on_report = on_report
        self._logged_tenths = 0
        # The claim just wrote progress 0 and checked `cancel_requested`; a job shorter than one interval
        # writes nothing more until its result (which sets progress 1), so a small job costs two commits.
        started = time.monotonic()
        self._last_write = started
        self._last_poll = started
        self._deadline = time.monotonic() + claim.time_limit_s if claim.time_limit_s else None
        self.stop_reason: str | None = None  # "cancelled", "superseded" or "time limit"

    def progress(self, fraction: float, message: str) -> None:
        """Record progress, rate-limited; a lost row (job taken away) is noticed by `should_stop`.

        Every report goes to `on_report` (the job's loss curve); each tenth of the way is a log line."""
        if self._on_report is not None:
            self._on_report(fraction, message)
        tenths = int(fraction * 10)
        if self._logged_tenths < tenths < 10:
            self._logged_tenths = tenths
            log.info("job %s: %d%%, %s", self._claim.job_id, 10 * tenths, message)
        now = time.monotonic()
        if fraction >= 1.0 or now - self._last_write < self._settings.progress_interval_s:
            return  # 100% is written with the result, in the same transaction
        self._last_write = now
        try:
            jobs.update_progress(
                self._session, self._claim.job_id, fraction, message, attempt=self._claim.attempt
            )
        except Exception as exc:  # progress is best effort; the job goes on
            self._session.rollback()
            log.warning("job %s: progress not recorded: %s", self._claim.job_id, exc)

    def should_stop(self) -> bool:
        """True when the job was cancelled, taken over by another attempt, or ran past its time limit."""
        if self.stop_reason is not None:
            return True
        now = time.monotonic()
        if self._deadline is not None and now >= self._deadline:
            self.stop_reason = "time limit"
            return True
        if now - self._last_poll < self._settings.cancel_poll_interval_s:
            return False
        self._last_poll = now
        try:
            stop = jobs.should_stop(self._session, self._claim.job_id, attempt=self._claim.attempt)
        except Exception as exc:  # a database hiccup is no reason to abandon a benchmark
            self._session.rollback()
            log.warning("job %s: cancellation check failed: %s", self._claim.job_id, exc)
            return False
        if stop:
            self.stop_reason = "cancelled" if self._cancel_requested() else "superseded"
        return stop

    def _cancel_requested(self) -> bool:
        try:
            job = jobs.get_job(self._session, self._claim.job_id)
            return bool(job is not None and job.cancel_requested)
        finally:
            self._session.rollback()

    def close(self) -> None:
        """Release the monitor's database session."""
        self._session.close()


@dataclass(frozen=True)
class JobOutcome:
    """How one delivery of a job ended, as recorded in its row: the status, and the error of a failed job.

    `status` is "succeeded", "failed", "cancelled", or "skipped" (this delivery changed nothing: a duplicate,
    a job cancelled before its claim, or an attempt taken over by another).
    """

    status: str
    error: str | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def persist(
    factory: sessionmaker[Session], what: str, write: Callable[[Session], T], *, patience_s: float = 120.0
) -> T:
    """Run one database write in a fresh session, retrying while the database is unreachable (a restart).

    The writes given here are conditional updates, so a retry after a commit whose answer was lost
    changes nothing the second time.
    """
    delay, deadline = 0.5, time.monotonic() + patience_s
    while True:
        try:
            with factory() as session:
                return write(session)
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database unavailable (%s); retrying in %.1f s", what, type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def execute_job(job_id: str, context: WorkerContext, settings: Settings | None = None) -> JobOutcome:
    """Run one job end to end in this process; returns what was recorded ("skipped" if not claimed)."""
    settings = settings or get_settings()
    factory = session_factory(settings)
    claim = persist(
        factory,
        f"job {job_id}: claim",
        lambda s: jobs.claim_job(s, job_id, worker_name=context.name, device_id=context.device_id),
    )
    if claim is None:
        log.info("job %s: not queued (duplicate delivery, cancelled or unknown); skipped", job_id)
        return JobOutcome("skipped")
    # The attempt's log lines and loss points are stored while it runs, its outcome's lines included.
    with JobCapture(factory, job_id, claim.attempt) as capture:
        return _run_claimed(factory, claim, context, settings, capture)


def _run_claimed(
    factory: sessionmaker[Session],
    claim: jobs.Claim,
    context: WorkerContext,
    settings: Settings,
    capture: JobCapture,
) -> JobOutcome:
    from engine.jobs import JobCancelled, JobDiverged, JobError, run_job

    job_id, attempt = claim.job_id, claim.attempt
    log.info("job %s: attempt %d started on %s", job_id, attempt, context.name)
    spec: dict[str, Any] = {**claim.spec, "device": context.engine_device}
    beats = job_heartbeats(factory, settings.heartbeat_interval_s)
    beats.watch(claim)
    monitor = JobMonitor(factory, claim, settings, on_report=capture.progress)
    try:
        check_memory(claim.spec, context.engine_device)
        document = run_job(spec, monitor.progress, monitor.should_stop)
    except JobCancelled:
        if monitor.stop_reason == "time limit":
            message = (
                f"time limit of {claim.time_limit_s:g} s exceeded (raise the spec's time_limit_s, "
                f"at most the server's {settings.max_job_time_s:g} s)"
            )
            return _failed(factory, job_id, message, attempt)
        if monitor.stop_reason == "superseded":
            log.warning("job %s: attempt %d was taken over by a newer attempt; stopped", job_id, attempt)
            return JobOutcome("skipped")
        cancelled = persist(
            factory,
            f"job {job_id}: cancel",
            lambda s: jobs.mark_cancelled(s, job_id, attempt=attempt, message="cancelled while running"),
        )
        return JobOutcome("cancelled" if cancelled else "skipped")
    except (JobDiverged, JobError, JobTooLarge) as exc:
        return _failed(factory, job_id, str(exc), attempt)
    except MemoryError:
        message = "out of memory while running (the estimate said it fits; reduce batch_size or widths)"
        return _failed(factory, job_id, message, attempt)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        return _failed(factory, job_id, _describe(exc), attempt)
    finally:
        beats.unwatch(claim)
        monitor.close()
        release_memory()
    result = persist(
        factory, f"job {job_id}: result", lambda s: jobs.complete_job(s, job_id, document, attempt=attempt)
    )
    if result is None:
        log.warning("job %s: finished, but the job was no longer this attempt's; result dropped", job_id)
        return JobOutcome("skipped")
    log.info("job %s: succeeded (%s samples/s)", job_id, result.samples_per_s)
    return JobOutcome("succeeded")


def check_memory(spec_doc: dict[str, Any], engine_device: str) -> None:
    """Raise `JobTooLarge` when the job's estimated memory exceeds what the device has free now."""
    spec = JobSpec.model_validate({**spec_doc, "device": "cpu" if engine_device == "cpu" else "gpu"})
    # On a CPU the bound is the host's RAM or, inside a container or slice, its cgroup limit if tighter.
    free, where = available_memory() if engine_device == "cpu" else free_memory_bytes(engine_device)
    check_fits(spec, free, where)


def _failed(factory: sessionmaker[Session], job_id: str, message: str, attempt: int) -> JobOutcome:
    recorded = persist(
        factory, f"job {job_id}: failure", lambda s: jobs.fail_job(s, job_id, message, attempt=attempt)
    )
    if not recorded:
        log.warning("job %s: failed, but the job was no longer this attempt's; failure dropped", job_id)
        return JobOutcome("skipped")
    log.info("job %s: failed: %s", job_id, message)
    return JobOutcome("failed", message[: jobs.MAX_ERROR_CHARS])  # as the row stores it
