"""The reconciler: no accepted job is lost, whatever dies.

The committed job row is the outbox; the broker message is only a hint. Every `reconcile_interval_s` the
reconciler looks at the rows and repairs what the messages failed to do:

1. `running` jobs that nobody runs any more are requeued (attempt + 1) and published again, or marked
   `failed` once `max_attempts` attempts ran. "Nobody runs it" is decided by the job's own heartbeat
   (`jobs.heartbeat_at`, set by a thread beside the running job in the pool process that runs it): missing,
   or older than `worker_dead_after_s`. That heartbeat stops with whatever stops the job (its pool child
   killed while the worker's main process lives, the whole worker or host gone), and it goes on while the
   job runs even when the worker's main process is stopped (SIGSTOP) or its row was wrongly marked
   stopped, so a healthy job is never taken from the pool child that runs it. A queued job whose cancel
   was requested is ended `cancelled`: no claim takes it.
2. A silent job that already ran past its time limit is marked `failed` (time limit) instead of requeued:
   a rerun would hit the same limit. A job that runs on past its limit plus a grace
   (`Settings.overdue_after_s`) while its heartbeat still beats (a solo-pool GPU worker has no hard
   limit) is marked `failed` too; its worker then stops.
3. `queued` jobs that were never published (the broker was down when they were submitted) are published;
   `queued` jobs published longer than `queued_republish_after_s` ago are published again when a live
   worker consumes their queue and no job of that queue was taken in that time (a queue that drains is
   alive: a lost message waits its turn; a queue nobody serves would only pile up copies).

Every change is one conditional UPDATE fenced by the status (and the attempt), written by
`services.jobs.service` (the only writer of job rows), so two reconcilers can run at once: the loser of a
race changes nothing and publishes nothing. Each tick handles at most `reconcile_batch` jobs of each
kind. A duplicate message is harmless (the worker's claim is conditional).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from services.core.config import OVERDUE_GRACE_S, Settings, get_settings
from services.core.db import session_factory, utcnow
from services.core.queue import publish_job
from services.devices.models import Worker
from services.devices.service import live_worker_condition
from services.jobs import service as jobs
from services.jobs.models import Job

log = logging.getLogger("bpbench.reconciler")

# A submitter commits the row and publishes right after; give it this long before publishing it for it.
UNPUBLISHED_GRACE_S = 2.0


@dataclass
class ReconcileReport:
    """What one pass changed."""

    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    published: int = 0
    republished: int = 0

    @property
    def changed(self) -> int:
        """How many jobs this pass touched."""
        return (
            self.requeued + self.failed + self.cancelled + self.timed_out + self.published + self.republished
        )

    def __str__(self) -> str:
        return (
            f"requeued {self.requeued}, failed {self.failed}, cancelled {self.cancelled}, "
            f"timed out {self.timed_out}, "
            f"published {self.published}, republished {self.republished}"
        )


def lost_running_jobs(session: Session, *, dead_after_s: float, limit: int, now: datetime) -> list[Job]:
    """Running jobs whose own heartbeat is missing or older than `dead_after_s` (whatever their worker's
    row says: the job's beat comes from the process that runs it)."""
    cutoff = now - timedelta(seconds=dead_after_s)
    query = (
        select(Job)
        .where(
            Job.status == "running",
            Job.worker_name.is_(None) | Job.heartbeat_at.is_(None) | (Job.heartbeat_at < cutoff),
        )
        .order_by(Job.started_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def unpublished_jobs(session: Session, *, limit: int, now: datetime) -> list[Job]:
    """Queued jobs never published, left alone by their submitter for `UNPUBLISHED_GRACE_S`; oldest first."""
    grace = now - timedelta(seconds=UNPUBLISHED_GRACE_S)
    query = (
        select(Job)
        .where(
            Job.status == "queued",
            Job.cancel_requested.is_(False),
            Job.published_at.is_(None),
            Job.updated_at < grace,
        )
        .order_by(Job.created_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def overdue_running_jobs(session: Session, settings: Settings, *, limit: int, now: datetime) -> list[Job]:
    """Running jobs (heartbeat or not) that started longer ago than `settings.overdue_after_s` their limit."""
    candidates = session.scalars(
        select(Job)
        .where(Job.status == "running", Job.time_limit_s.is_not(None), Job.started_at.is_not(None))
        .order_by(Job.started_at)
        .limit(limit)
    )
    return [
        job
        for job in candidates
        if job.started_at is not None
        and job.time_limit_s is not None
        and (now - job.started_at).total_seconds() > settings.overdue_after_s(job.time_limit_s)
    ]


def _ran_past_limit(job: Job, now: datetime) -> bool:
    return (
        job.started_at is not None
        and job.time_limit_s is not None
        and (now - job.started_at).total_seconds() >= job.time_limit_s
    )


def _time_limit_message(job: Job) -> str:
    return (
        f"time limit of {job.time_limit_s:g} s exceeded: the run was stopped by the worker's hard limit "
        "or never ended (raise the spec's time_limit_s, at most the server's max_job_time_s)"
    )


def _fail_attempt(session: Session, job: Job, message: str) -> bool:
    return jobs.fail_job(session, job.id, message, attempt=job.attempts)


def _publish_taken(session: Session, job: Job, *, previous: datetime | None, now: datetime) -> bool:
    """Publish a job whose `published_at` this process just moved from `previous` to `now`.

    If the broker refuses, the job service puts `published_at` back (only if nobody changed it since), so
    the next pass tries again.
    """
    try:
        publish_job(job.id, job.queue, time_limit_s=job.time_limit_s)
    except Exception as exc:
        jobs.release_publication(session, job.id, taken_at=now, previous=previous)
        log.warning("job %s: could not be published to %s: %s", job.id, job.queue, exc)
        return False
    return True


def recover_running(session: Session, settings: Settings, report: ReconcileReport, *, now: datetime) -> None:
    """Requeue (or fail) the running jobs nobody runs any more, and fail those far past their limit."""
    for job in lost_running_jobs(
        session, dead_after_s=settings.worker_dead_after_s, limit=settings.reconcile_batch, now=now
    ):
        if _ran_past_limit(job, now):
            if _fail_attempt(session, job, _time_limit_message(job)):
                report.timed_out += 1
                log.warning(
                    "job %s: attempt %d ran past its time limit and went silent", job.id, job.attempts
                )
            continue
        reason = f"worker {job.worker_name} stopped sending heartbeats"
        outcome = jobs.requeue_job(
            session, job.id, attempt=job.attempts, reason=reason, max_attempts=settings.max_attempts
        )
        if outcome == "failed":
            report.failed += 1
            log.warning("job %s: failed after %d attempt(s): %s", job.id, job.attempts, reason)
        elif outcome == "cancelled":
            report.cancelled += 1
            log.warning("job %s: attempt %d lost (%s); cancelled, as was asked", job.id, job.attempts, reason)
        elif outcome == "queued":
            report.requeued += 1
            log.warning("job %s: attempt %d lost (%s); requeued", job.id, job.attempts, reason)
            if jobs.take_publication(session, job.id, published_before=None, now=now):
                _publish_taken(session, job, previous=None, now=now)
    for job_id in jobs.finish_cancelled_queued(session, limit=settings.reconcile_batch):
        report.cancelled += 1
        log.warning("job %s: queued with its cancel requested; cancelled", job_id)
    for job in overdue_running_jobs(session, settings, limit=settings.reconcile_batch, now=now):
        if _fail_attempt(session, job, _time_limit_message(job)):
            report.timed_out += 1
            log.warning("job %s: still running %.0f s past its time limit; failed", job.id, OVERDUE_GRACE_S)


def publish_queued(session: Session, settings: Settings, report: ReconcileReport, *, now: datetime) -> None:
    """Publish queued jobs never published, and republish those whose message looks lost."""
    for job in unpublished_jobs(session, limit=settings.reconcile_batch, now=now):
        if jobs.take_publication(session, job.id, published_before=None, now=now) and _publish_taken(
            session, job, previous=None, now=now
        ):
            report.published += 1
    cutoff = now - timedelta(seconds=settings.queued_republish_after_s)
    stale = session.scalars(
        select(Job)
        .where(Job.status == "queued", Job.cancel_requested.is_(False), Job.published_at < cutoff)
        .order_by(Job.published_at)
        .limit(settings.reconcile_batch)
    ).all()
    if not stale:
        return
    live = live_worker_condition(dead_after_s=settings.worker_dead_after_s, now=now)
    consumed = {
        str(name) for queues in session.scalars(select(Worker.queues).where(live)) for name in queues or []
    }
    draining: dict[str, bool] = {}
    for job in stale:
        if job.queue not in consumed:
            continue  # nobody serves this queue: another copy of the message would only pile up
        if job.queue not in draining:
            # A queue whose jobs are being taken is alive: its old messages are just waiting their turn.
            draining[job.queue] = bool(
                session.scalar(select(exists().where(Job.queue == job.queue, Job.started_at >= cutoff)))
            )
            session.rollback()
        if draining[job.queue]:
            continue
        previous = job.published_at
        if jobs.take_publication(session, job.id, published_before=cutoff, now=now) and _publish_taken(
            session, job, previous=previous, now=now
        ):
            report.republished += 1


def reconcile_once(
    session: Session, settings: Settings | None = None, *, check_running: bool = True
) -> ReconcileReport:
    """One pass over the job table (see the module docstring); returns what it changed."""
    settings = settings or get_settings()
    report = ReconcileReport()
    now = utcnow()
    if check_running:
        recover_running(session, settings, report, now=now)
    publish_queued(session, settings, report, now=now)
    return report


class Reconciler:
    """The reconciler loop: one pass every `reconcile_interval_s` until `stop()`.

    After the database was unreachable, running jobs are not judged for one `worker_dead_after_s`: the
    workers' heartbeats failed during the outage too, and must get the chance to beat again first.
    """

    def __init__(
        self, settings: Settings | None = None, factory: sessionmaker[Session] | None = None
    ) -> None:
        self.settings = settings or get_settings()
        self._factory = factory
        self._stop = threading.Event()
        self._outage_ended_at: float | None = None
        self._in_outage = False
        self.passes = 0

    def run_pass(self) -> ReconcileReport | None:
        """One pass; None when the database could not be reached (logged, tried again next tick)."""
        factory = self._factory or session_factory(self.settings)
        # The first pass that reaches the database again ends an outage; it must not judge running jobs yet.
        judge_running = not self._in_outage and (
            self._outage_ended_at is None
            or time.monotonic() - self._outage_ended_at >= self.settings.worker_dead_after_s
        )
        try:
            with factory() as session:
                report = reconcile_once(session, self.settings, check_running=judge_running)
        except (OperationalError, InterfaceError) as exc:
            if not self._in_outage:
                log.warning("database unreachable (%s); the reconciler keeps trying", type(exc).__name__)
            self._in_outage = True
            return None
        if self._in_outage:
            self._in_outage = False
            self._outage_ended_at = time.monotonic()
            log.info(
                "database reachable again; running jobs judged after %.0f s",
                self.settings.worker_dead_after_s,
            )
        self.passes += 1
        if report.changed:
            log.info("reconciled: %s", report)
        return report

    def run(self) -> None:
        """Pass after pass until `stop()` is called (or the process gets a signal)."""
        log.info(
            "reconciler: every %.1f s; dead after %.1f s; republish after %.0f s; at most %d attempts",
            self.settings.reconcile_interval_s,
            self.settings.worker_dead_after_s,
            self.settings.queued_republish_after_s,
            self.settings.max_attempts,
        )
        while not self._stop.is_set():
            try:
                self.run_pass()
            except Exception:  # one bad pass (a broker hiccup) must not end the loop
                log.exception("reconciler pass failed")
            self._stop.wait(self.settings.reconcile_interval_s)

    def stop(self) -> None:
        """Ask the loop to end after the current pass."""
        self._stop.set()


def run_reconciler(settings: Settings | None = None) -> int:
    """`bpbench reconciler`: configure the queue client, then loop until SIGTERM/SIGINT; returns 0."""
    import signal

    from services.core import queue

    settings = settings or get_settings()
    queue.configure(settings)
    reconciler = Reconciler(settings)

    def stop(signum: int, _frame: Any) -> None:
        log.info("reconciler: %s received, stopping", signal.Signals(signum).name)
        reconciler.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    reconciler.run()
    return 0
