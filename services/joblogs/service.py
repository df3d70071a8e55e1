"""Job log lines and partial loss curves: written by the worker's capture, read by the API.

Inserting rows here changes no `jobs` row (that stays `services/jobs/service.py`'s alone). Lines are read
in sequence order (`job_logs.id`); a client that polls passes the last sequence number it saw as `after`.
A job's lines are complete once the job is final and `LOG_SETTLE_S` has passed since it finished: the
worker writes an attempt's last lines right after its outcome (`services/joblogs/capture.py` flushes at
close), so a follower that stops at the first final status could miss them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from services.core.db import utcnow
from services.joblogs.models import MAX_CURVE_POINTS, MAX_MESSAGE_CHARS, JobLogLine, JobLossCurve
from services.jobs.models import FINAL_STATUSES, Job

LOG_SETTLE_S = 5.0
_LINES = cast(Table, JobLogLine.__table__)


@dataclass(frozen=True)
class LogLine:
    """A line to store: the attempt it belongs to, when it was logged, its level, logger and message."""

    attempt: int
    logged_at: datetime
    level: str
    logger: str
    message: str


def clip_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` within `limit` characters: its start and its end (where a traceback says what went wrong),
    joined by a line saying how much was cut."""
    if len(text) <= limit:
        return text
    marker = f"\n… {len(text) - limit} characters cut …\n"
    head = (limit - len(marker)) // 2
    tail = limit - len(marker) - head
    return text[:head] + marker + text[len(text) - tail :]


def append_log_lines(session: Session, job_id: str, lines: Sequence[LogLine]) -> None:
    """Insert the lines (one multi-row INSERT, in their order); the caller commits."""
    if not lines:
        return
    session.execute(
        insert(_LINES),
        [
            {
                "job_id": job_id,
                "attempt": line.attempt,
                "logged_at": line.logged_at,
                "level": line.level[:10],
                "logger": line.logger[:100],
                "message": clip_message(line.message),
            }
            for line in lines
        ],
    )


def log_lines(session: Session, job_id: str, *, after: int = 0, limit: int = 1000) -> list[JobLogLine]:
    """The job's lines with a sequence number above `after`, oldest first, at most `limit`."""
    query = (
        select(JobLogLine)
        .where(JobLogLine.job_id == job_id, JobLogLine.id > after)
        .order_by(JobLogLine.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def logs_complete(job: Job, now: datetime | None = None) -> bool:
    """True once no more lines will come for `job`: final, and finished `LOG_SETTLE_S` ago."""
    if job.status not in FINAL_STATUSES:
        return False
    if job.finished_at is None:
        return True
    return (now or utcnow()) - job.finished_at >= timedelta(seconds=LOG_SETTLE_S)


def thin_points(points: Sequence[Sequence[float]], limit: int = MAX_CURVE_POINTS) -> list[list[float]]:
    """At most `limit` of `points`, evenly spaced by position, the first and the last always kept."""
    if len(points) <= limit:
        return [list(p) for p in points]
    if limit < 2:
        return [list(points[-1])][:limit]
    last = len(points) - 1
    picked = sorted({round(i * last / (limit - 1)) for i in range(limit)})
    return [list(points[i]) for i in picked]


def store_loss_curve(
    session: Session, job_id: str, attempt: int, points: Sequence[Sequence[float]], total_steps: int | None
) -> None:
    """Replace the attempt's partial loss curve with `points` (thinned to `MAX_CURVE_POINTS`; non-finite
    losses left out); the caller commits. One writer per attempt: its worker."""
    kept = [[int(step), float(loss)] for step, loss in points if math.isfinite(float(loss))]
    values: dict[str, Any] = {"points": thin_points(kept), "total_steps": total_steps, "updated_at": utcnow()}
    changed = session.execute(
        update(JobLossCurve)
        .where(JobLossCurve.job_id == job_id, JobLossCurve.attempt == attempt)
        .values(**values)
    )
    if getattr(changed, "rowcount", 0) == 0:
        session.execute(insert(JobLossCurve).values(job_id=job_id, attempt=attempt, **values))


def latest_loss_curve(session: Session, job_id: str) -> JobLossCurve | None:
    """The partial loss curve of the job's newest attempt that reported one, or None."""
    query = (
        select(JobLossCurve)
        .where(JobLossCurve.job_id == job_id)
        .order_by(JobLossCurve.attempt.desc())
        .limit(1)
    )
    return session.scalars(query).first()
