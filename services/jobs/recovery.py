"""Recovery of the embedded stack after an unclean stop (what `bpbench up` does before its workers start).

`bpbench up` owns every worker of its data directory, so when it starts no job can really be running: a job
still marked `running` was cut off when the previous `up` stopped. Each one goes through the job service's
requeue in its recovery mode (`requeue_interrupted`): back to `queued` with its worker, device and start
cleared, `cancelled` if a cancel was asked for, or `failed` once `max_attempts` attempts ran, so a job that
brings the stack down every time ends after that many starts instead of looping forever. Then every queued
job that was never published is published. A duplicate message is harmless: the worker's claim is a
conditional `queued -> running` update. Deployments with independent workers use the reconciler instead,
which decides from heartbeats. Nothing here writes a row itself: `services.jobs.service` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core.config import Settings
from services.jobs.models import Job
from services.jobs.service import publish, requeue_interrupted

log = logging.getLogger(__name__)

INTERRUPTED_REASON = "the stack stopped while it ran"


@dataclass(frozen=True)
class Recovery:
    """What one recovery did: jobs requeued, failed (out of attempts), cancelled, and published."""

    requeued: int
    failed: int
    cancelled: int
    published: int

    @property
    def changed(self) -> int:
        """How many jobs it touched."""
        return self.requeued + self.failed + self.cancelled + self.published


def recover(session: Session, settings: Settings) -> Recovery:
    """Requeue (or fail, or cancel) every job left `running`, then publish every unpublished queued job."""
    outcomes = requeue_interrupted(session, reason=INTERRUPTED_REASON, max_attempts=settings.max_attempts)
    for status in ("failed", "cancelled"):
        if outcomes[status]:
            log.warning("recovery: %d interrupted job(s) %s", outcomes[status], status)
    return Recovery(
        requeued=outcomes["queued"],
        failed=outcomes["failed"],
        cancelled=outcomes["cancelled"],
        published=publish_unpublished(session),
    )


def publish_unpublished(session: Session) -> int:
    """Publish every queued job that has no `published_at`; returns how many were sent."""
    sent = 0
    for job in session.scalars(select(Job).where(Job.status == "queued", Job.published_at.is_(None))).all():
        try:
            publish(session, job)
            sent += 1
        except Exception as exc:  # the row stays queued; the next start tries again
            session.rollback()
            log.warning("job %s is still unpublished: %s", job.id, exc)
    return sent
