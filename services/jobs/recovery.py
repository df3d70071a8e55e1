"""Recovery of the embedded stack after an unclean stop (used by `bpbench up` before its workers start).

`bpbench up` owns every worker of its data directory, so when it starts no job can really be running: a job
still marked `running` was cut off when the previous `up` stopped. It goes back to `queued` and is published
again, and so is every queued job that was never published. A duplicate message is harmless: the worker's
claim is a conditional `queued -> running` update. Deployments with independent workers use the reconciler
instead (`services/jobs/reconciler.py`), which decides from heartbeats.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.core.db import utcnow
from services.jobs.models import Job
from services.jobs.service import publish

log = logging.getLogger(__name__)


def requeue_interrupted(session: Session) -> int:
    """Put jobs left `running` back to `queued` (those asked to stop become `cancelled`); returns how many."""
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.status == "running", Job.cancel_requested.is_(True))
        .values(status="cancelled", progress_message="cancelled while the stack was down", finished_at=now)
    )
    result = session.execute(
        update(Job)
        .where(Job.status == "running")
        .values(
            status="queued",
            progress=0.0,
            progress_message="requeued: the stack stopped while it ran",
            published_at=None,
            updated_at=now,
        )
    )
    session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


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
