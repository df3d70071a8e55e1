"""Scheduled suites: create, list, remove, and run what is due (called every minute by Celery beat's tick).

Running a due schedule is claimed by one conditional UPDATE of its `next_run_at` (from the value read to the
next due time after now), so two ticks that overlap, or two beat processes by mistake, submit it once. The
jobs are submitted through the jobs service like any other (committed, then published).

A run is *missing* when none of its jobs succeeded within one period of being submitted: the device stopped
reporting (its worker is gone, or every job failed). That is an alert event (`missing_data:<schedule>:<run
time>`), raised once per run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.alerts.service import Event
from services.core.db import utcnow
from services.devices.models import Device
from services.devices.service import device_spelling
from services.jobs import service as jobs
from services.jobs.models import Job
from services.jobs.spec import DEVICE_PATTERN
from services.jobs.suites import SUITES, runnable_suite
from services.schedules.models import Schedule

log = logging.getLogger(__name__)

MIN_EVERY_S = 60.0
MAX_EVERY_S = 366 * 24 * 3600.0


class ScheduleError(ValueError):
    """A schedule that cannot be made as asked (unknown suite or target, period out of range)."""


def create_schedule(
    session: Session, *, suite: str, target: str, every_s: float, start_at: datetime | None = None
) -> Schedule:
    """A new enabled schedule, first due at `start_at` (default: now); committed."""
    if suite not in SUITES:
        raise ScheduleError(f"suite {suite!r} is not known; accepted: {', '.join(SUITES)}")
    if session.get(Device, target) is None and not DEVICE_PATTERN.fullmatch(target):
        raise ScheduleError(
            f"target {target!r} is neither a registered device id nor a class (cpu, gpu, gpu:N)"
        )
    if not (MIN_EVERY_S <= every_s <= MAX_EVERY_S) or not math.isfinite(every_s):
        raise ScheduleError(
            f"every_s {every_s!r} is out of range; accepted: {MIN_EVERY_S:g} to {MAX_EVERY_S:g}"
        )
    schedule = Schedule(suite=suite, target=target, every_s=every_s, next_run_at=start_at or utcnow())
    session.add(schedule)
    session.commit()
    return schedule


def list_schedules(session: Session) -> list[Schedule]:
    return list(session.scalars(select(Schedule).order_by(Schedule.created_at, Schedule.id)).all())


def remove_schedule(session: Session, schedule_id: str) -> bool:
    """Delete a schedule; False if there was none (committed)."""
    schedule = session.get(Schedule, schedule_id)
    if schedule is None:
        return False
    session.delete(schedule)
    session.commit()
    return True


def _spec_device_and_target(session: Session, target: str) -> tuple[str, str | None]:
    device = session.get(Device, target)
    return (device_spelling(device), device.id) if device is not None else (target, None)


def run_due(session: Session, *, now: datetime | None = None) -> list[tuple[Schedule, list[Job]]]:
    """Submit the suite of every enabled schedule that is due; each schedule claimed by one UPDATE."""
    now = now or utcnow()
    due = session.scalars(
        select(Schedule).where(Schedule.enabled.is_(True), Schedule.next_run_at <= now)
    ).all()
    ran = []
    for schedule in due:
        periods = math.floor((now - schedule.next_run_at).total_seconds() / schedule.every_s) + 1
        following = schedule.next_run_at + timedelta(seconds=periods * schedule.every_s)
        claimed = session.execute(
            update(Schedule)
            .where(Schedule.id == schedule.id, Schedule.next_run_at == schedule.next_run_at)
            .values(next_run_at=following, last_run_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            continue  # another tick took it
        spec_device, device_id = _spec_device_and_target(session, schedule.target)
        items, left_out = runnable_suite(session, schedule.suite, spec_device, device_id)
        for reason in left_out:
            log.info("schedule %s left out %s", schedule.id[:8], reason)
        submitted = [jobs.submit_job(session, spec, target_device_id=device_id) for _, spec in items]
        session.execute(
            update(Schedule)
            .where(Schedule.id == schedule.id)
            .values(last_job_ids=[job.id for job in submitted])
            .execution_options(synchronize_session=False)
        )
        session.commit()
        session.refresh(schedule)
        ran.append((schedule, submitted))
    return ran


def missing_data_events(session: Session, *, now: datetime | None = None) -> list[Event]:
    """An event for each schedule whose last run has had a full period and not one succeeded job."""
    now = now or utcnow()
    events = []
    for schedule in list_schedules(session):
        if schedule.last_run_at is None or not schedule.last_job_ids:
            continue
        if now - schedule.last_run_at < timedelta(seconds=schedule.every_s):
            continue
        statuses = _statuses(session, schedule.last_job_ids)
        if "succeeded" in statuses:
            continue
        text = (
            f"missing data: schedule {schedule.id[:8]} ({schedule.suite} on {schedule.target}) ran at "
            f"{schedule.last_run_at:%Y-%m-%d %H:%M} UTC and none of its {len(schedule.last_job_ids)} jobs "
            f"succeeded ({', '.join(sorted(set(statuses)))})"
        )
        details = {
            "schedule_id": schedule.id,
            "suite": schedule.suite,
            "target": schedule.target,
            "run_at": schedule.last_run_at.isoformat(),
            "job_statuses": statuses,
        }
        events.append(
            Event(
                f"missing_data:{schedule.id}:{schedule.last_run_at.isoformat()}",
                "missing_data",
                text,
                details,
            )
        )
    return events


def _statuses(session: Session, job_ids: Sequence[str]) -> list[str]:
    return list(session.scalars(select(Job.status).where(Job.id.in_(list(job_ids)))).all())
