"""The reconciler when processes die or stop: a cancel is always honoured, a beating job is never taken.

Real database (SQLite and PostgreSQL) and a real Redis broker; jobs live on queues no worker consumes, and
staleness is made by moving timestamps back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from sqlalchemy import update
from sqlalchemy.orm import Session

from services.core.config import Settings
from services.core.db import utcnow
from services.devices import service as devices
from services.devices.models import Worker
from services.jobs import service as jobs
from services.jobs.models import Job
from services.jobs.reconciler import reconcile_once
from tests.support.jobs import RECONCILER_TIMING, tiny_spec, unconsumed_queue


@pytest.fixture
def settings(service_settings: Settings) -> Settings:
    """The reconciler's production timing."""
    return service_settings.model_copy(update=RECONCILER_TIMING)


@pytest.fixture
def queue_name(service_settings: Settings) -> Iterator[str]:
    """A queue no worker consumes, emptied after the test."""
    with unconsumed_queue(service_settings.broker_url, "fault") as name:
        yield name


def queue_length(broker_url: str, queue: str) -> int:
    client = redis.Redis.from_url(broker_url)
    try:
        return int(client.llen(queue))
    finally:
        client.close()


def worker_row(session: Session, queue: str, *, beat_age_s: float) -> Worker:
    device = devices.register_device(session, {"device": "cpu", "cpu_model": "fault test CPU"})
    worker = devices.register_worker(
        session,
        name=f"w-{queue}",
        device_id=device.id,
        device="cpu",
        queues=[queue],
        hostname="h",
        pid=7,
    )
    worker.last_heartbeat = utcnow() - timedelta(seconds=beat_age_s)
    session.commit()
    return worker


def claimed_job(session: Session, queue: str, worker: Worker, *, beat_age_s: float) -> Job:
    job = jobs.create_job(session, tiny_spec(seed=int(uuid.uuid4().int % 1000)))
    job.queue = queue
    session.commit()
    assert jobs.claim_job(session, job.id, worker_name=worker.name, device_id=worker.device_id) is not None
    past = utcnow() - timedelta(seconds=beat_age_s)
    session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=past))
    session.commit()
    return job


def fresh(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    session.rollback()
    return job


def test_a_queued_job_left_with_its_cancel_requested_ends_cancelled(
    db_session: Session, settings: Settings, queue_name: str
) -> None:
    # What a requeue racing with a cancel left behind: queued, cancel requested, never claimed again.
    job = jobs.create_job(db_session, tiny_spec(seed=int(uuid.uuid4().int % 1000)))
    job.queue = queue_name
    db_session.commit()
    db_session.execute(
        update(Job).where(Job.id == job.id).values(cancel_requested=True, published_at=utcnow(), attempts=1)
    )
    db_session.commit()

    report = reconcile_once(db_session, settings)

    after = fresh(db_session, job.id)
    assert (after.status, after.finished_at is not None, after.attempts) == ("cancelled", True, 1)
    assert after.progress_message == "cancelled before it ran again"
    assert report.cancelled >= 1
    assert queue_length(settings.broker_url, queue_name) == 0


def test_a_cancel_of_a_job_whose_worker_died_ends_cancelled_even_past_max_attempts(
    db_session: Session, settings: Settings, queue_name: str
) -> None:
    worker = worker_row(db_session, queue_name, beat_age_s=60)
    job = claimed_job(db_session, queue_name, worker, beat_age_s=60)
    db_session.execute(update(Job).where(Job.id == job.id).values(attempts=3))
    db_session.commit()
    assert jobs.cancel_job(db_session, job.id).status == "running"

    reconcile_once(db_session, settings)

    after = fresh(db_session, job.id)
    assert (after.status, after.attempts, after.error) == ("cancelled", 3, None)
    assert after.progress_message == f"cancelled: worker {worker.name} stopped sending heartbeats"


def test_cancel_makes_a_queued_job_cancelled_and_flags_a_running_one_in_one_statement(
    db_session: Session, queue_name: str
) -> None:
    worker = worker_row(db_session, queue_name, beat_age_s=0)
    queued = jobs.create_job(db_session, tiny_spec(seed=1))
    db_session.commit()
    running = claimed_job(db_session, queue_name, worker, beat_age_s=0)

    cancelled = jobs.cancel_job(db_session, queued.id)
    flagged = jobs.cancel_job(db_session, running.id)

    assert (cancelled.status, cancelled.cancel_requested, cancelled.progress_message) == (
        "cancelled",
        True,
        "cancelled before it started",
    )
    assert cancelled.finished_at is not None
    assert (flagged.status, flagged.cancel_requested, flagged.finished_at) == ("running", True, None)
    assert flagged.progress_message == "started"


def test_a_beating_job_is_not_taken_from_a_worker_whose_main_process_went_silent(
    db_session: Session, settings: Settings, queue_name: str
) -> None:
    # SIGSTOP of the worker's main process: its row goes silent, the pool child runs and beats on.
    worker = worker_row(db_session, queue_name, beat_age_s=60)
    job = claimed_job(db_session, queue_name, worker, beat_age_s=1)

    reconcile_once(db_session, settings)

    after = fresh(db_session, job.id)
    assert (after.status, after.attempts, after.worker_name) == ("running", 1, worker.name)
    assert queue_length(settings.broker_url, queue_name) == 0


def test_a_beating_job_is_not_taken_from_a_worker_row_marked_stopped(
    db_session: Session, settings: Settings, queue_name: str
) -> None:
    worker = worker_row(db_session, queue_name, beat_age_s=0)
    job = claimed_job(db_session, queue_name, worker, beat_age_s=1)
    assert devices.mark_worker_stopped(db_session, worker.name, pid=7, started_at=worker.started_at)

    reconcile_once(db_session, settings)

    assert (fresh(db_session, job.id).status, fresh(db_session, job.id).attempts) == ("running", 1)
