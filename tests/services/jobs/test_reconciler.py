"""The reconciler on SQLite and PostgreSQL, with a real Redis broker: what it requeues, fails and publishes.

Jobs here live on queues of their own (`device.rec-<random>`) that no worker consumes, so the messages the
reconciler publishes stay in Redis where the test can count them; staleness is made by moving timestamps
back in the database.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from services.core.config import Settings
from services.core.db import utcnow
from services.devices import service as devices
from services.devices.models import Worker
from services.jobs import service as jobs
from services.jobs.models import Job
from services.jobs.reconciler import Reconciler, ReconcileReport, reconcile_once
from tests.support.jobs import RECONCILER_TIMING, tiny_spec, unconsumed_queue


@pytest.fixture
def settings(service_settings: Settings) -> Settings:
    """This session's settings with the production timing defaults of the reconciler."""
    return service_settings.model_copy(update=RECONCILER_TIMING)


@pytest.fixture
def queue_name(service_settings: Settings) -> Iterator[str]:
    """A queue no worker consumes, emptied after the test."""
    with unconsumed_queue(service_settings.broker_url, "rec") as name:
        yield name


def messages_for(broker_url: str, queue: str, job_id: str) -> int:
    """How many messages of `queue` name `job_id`."""
    client = redis.Redis.from_url(broker_url)
    try:
        return sum(job_id.encode() in message for message in client.lrange(queue, 0, -1))
    finally:
        client.close()


def add_worker(session: Session, name: str, *, queues: list[str], beat_age_s: float = 0.0) -> Worker:
    """A worker row whose last heartbeat is `beat_age_s` old."""
    device = devices.register_device(session, {"device": "cpu", "cpu_model": "reconciler test CPU"})
    worker = devices.register_worker(
        session, name=name, device_id=device.id, device="cpu", queues=queues, hostname="test", pid=1
    )
    worker.last_heartbeat = utcnow() - timedelta(seconds=beat_age_s)
    session.commit()
    return worker


def queued_job(session: Session, queue: str, **values: Any) -> Job:
    """A committed queued job on `queue`, with extra column values."""
    job = jobs.create_job(session, tiny_spec(seed=int(uuid.uuid4().int % 1000)))
    session.commit()
    session.execute(update(Job).where(Job.id == job.id).values(queue=queue, **values))
    session.commit()
    session.refresh(job)
    return job


def running_job(session: Session, queue: str, worker: str, *, beat_age_s: float, **values: Any) -> Job:
    """A job claimed by `worker` whose own heartbeat (`heartbeat_at`) is `beat_age_s` old."""
    job = queued_job(session, queue)
    claim = jobs.claim_job(session, job.id, worker_name=worker, device_id=_device_of(session, worker))
    assert claim is not None
    past = utcnow() - timedelta(seconds=beat_age_s)
    session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=past, **values))
    session.commit()
    session.refresh(job)
    return job


def _device_of(session: Session, worker: str) -> str:
    row = session.get(Worker, worker)
    assert row is not None
    return row.device_id


def fresh(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


def test_a_running_job_of_a_dead_worker_is_requeued_with_its_attempt_and_published_once(
    db_session: Session, settings: Settings, queue_name: str
) -> None:
    add_worker(db_session, f"dead-{queue_name}", queues=[queue_name], beat_age_s=60)
    job = running_job(db_session, queue_name, f"dead-{queue_name}", beat_age_s=60)

    first = reconcile_once(db_session, settings)
    second = reconcile_once(db_session, settings)

    after = fresh(db_session, job.id)
    assert (after.status, after.attempts, after.worker_name, after.published_at is not None) == (
        "queued",
        1,
        None,
        True,
    )
    assert after.progress_message is not None and "requeued after attempt 1" in after.progress_message
    assert first.requeued >= 1 and second.requeued == 0
    assert messages_for(settings.broker_url, queue_name, job.id) == 1


def test_a_job_whose_own_heartbeat_stopped_is_requeued_though_its_worker_lives(
    db_session: Session, settings: Settings, queue_name: str
) -> None:
    # A killed pool child: the worker's main process still beats, the job's heartbeat thread died with it.
    add_worker(db_session, f"alive-{queue_name}", queues=[queue_name], beat_age_s=0)
    lost = running_job(db_session, queue_name, f"alive-{queue_name}", beat_age_s=20)
    healthy = running_job(db_session, queue_name, f"alive-{queue_name}", beat_age_s=1)

    reconcile_once(db_session, settings)

    assert fresh(db_session, lost.id).status == "queued"
    assert (fresh(db_session, healthy.id).status, fresh(db_session, healthy.id).attempts) == ("running", 1)
    assert messages_for(settings.broker_url, queue_name, lost.id) == 1
    assert messages_for(settings.broker_url, queue_name, healthy.id) == 0


def test_a_job_lost_on_its_last_attempt_is_failed_with_the_reason(
    db_session: Session, settings: Settings, queue_name: str
) -> None:
    add_worker(db_session, f"dead-{queue_name}", queues=[queue_name], beat_age_s=60)
    job = running_job(db_session, queue_name, f"dead-{queue_name}", beat_age_s=60, attempts=3)

    report = reconcile_once(db_session, settings)

    after = fresh(db_session, job.id)
    assert (after.status, after.finished_at is not None) == ("failed", True)
    assert after.error == f"gave up after 3 attempt(s): worker dead-{queue_name} stopped sending heartbeats"
    assert report.failed >= 1
    assert messages_for(settings.broker_url, queue_name, job.id) == 0


def test_a_silent_job_past_its_time_limit_is_failed_not_rerun(
    db_session: Session, settings: Settings, queue_name: str
) -> None:
    # Celery's hard time limit killed the pool child: rerunning would hit the same limit.
    add_worker(db_session, f"alive-{queue_name}", queues=[queue_name], beat_age_s=0)
    job = running_job(
        db_session,
        queue_name,
        f"alive-{queue_name}",
        beat_age_s=30,
        time_limit_s=10.0,
        started_at=utcnow() - timedelta(seconds=75),
    )

    report = reconcile_once(db_session, settings)

    after = fresh(db_session, job.id)
    assert (after.status, after.attempts) == ("failed", 1)
    assert after.error is not None and after.error.startswith("time limit of 10 s exceeded")
    assert report.timed_out >= 1


def test_a_job_still_beating_long_past_its_time_limit_is_failed(
    db_session: Session, settings: Settings, queue_name: str
) -> None:
    # A solo-pool (GPU) worker has no hard limit: a hung step would otherwise run forever.
    add_worker(db_session, f"alive-{queue_name}", queues=[queue_name], beat_age_s=0)
    job = running_job(
        db_session,
        queue_name,
        f"alive-{queue_name}",
        beat_age_s=0,
        time_limit_s=10.0,
        started_at=utcnow() - timedelta(seconds=10 + 121),
    )

    reconcile_once(db_session, settings)

    after = fresh(db_session, job.id)
    assert after.status == "failed" and after.error is not None and "time limit of 10 s" in after.error


def test_a_queued_job_never_published_is_published_after_the_submitters_grace(
    db_session: Session, settings: Settings, queue_name: str
) -> None:
    old = queued_job(db_session, queue_name, updated_at=utcnow() - timedelta(seconds=10))
    just_submitted = queued_job(db_session, queue_name)

    report = reconcile_once(db_session, settings)

    assert fresh(db_session, old.id).published_at is not None
    assert fresh(db_session, just_submitted.id).published_at is None
    assert report.published >= 1
    assert messages_for(settings.broker_url, queue_name, old.id) == 1
    assert messages_for(settings.broker_url, queue_name, just_submitted.id) == 0


def test_an_old_message_is_republished_only_on_a_served_queue_that_does_not_drain(
    db_session: Session, settings: Settings, queue_name: str
) -> None:
    stale_at = utcnow() - timedelta(seconds=120)
    unserved = f"{queue_name}-unserved"
    add_worker(db_session, f"idle-{queue_name}", queues=[queue_name], beat_age_s=0)
    lost = queued_job(db_session, queue_name, published_at=stale_at)
    nobody_serves = queued_job(db_session, unserved, published_at=stale_at)

    reconcile_once(db_session, settings)
    reconcile_once(db_session, settings)  # published_at moved on: not again

    assert messages_for(settings.broker_url, queue_name, lost.id) == 1
    republished_at = fresh(db_session, lost.id).published_at
    assert republished_at is not None and republished_at > stale_at
    assert messages_for(settings.broker_url, unserved, nobody_serves.id) == 0

    # The same on a queue whose jobs are being taken: the message just waits its turn.
    waiting = queued_job(db_session, queue_name, published_at=stale_at)
    add_worker(db_session, f"busy-{queue_name}", queues=[queue_name], beat_age_s=0)
    running_job(db_session, queue_name, f"busy-{queue_name}", beat_age_s=0)
    reconcile_once(db_session, settings)
    assert messages_for(settings.broker_url, queue_name, waiting.id) == 0
    redis.Redis.from_url(settings.broker_url).delete(unserved)


def test_two_reconcilers_at_once_requeue_and_publish_each_job_once(
    session_maker: sessionmaker[Session], settings: Settings, queue_name: str
) -> None:
    with session_maker() as session:
        add_worker(session, f"dead-{queue_name}", queues=[queue_name], beat_age_s=60)
        lost = [running_job(session, queue_name, f"dead-{queue_name}", beat_age_s=60).id for _ in range(20)]
    reports: list[ReconcileReport] = []
    barrier = threading.Barrier(2)

    def reconcile() -> None:
        with session_maker() as session:
            barrier.wait()
            reports.append(reconcile_once(session, settings))

    threads = [threading.Thread(target=reconcile) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    with session_maker() as session:
        assert {fresh(session, job_id).status for job_id in lost} == {"queued"}
    assert [messages_for(settings.broker_url, queue_name, job_id) for job_id in lost] == [1] * 20
    assert sum(report.requeued for report in reports) >= 20


def test_the_first_pass_after_a_database_outage_does_not_judge_running_jobs(
    db_session: Session, session_maker: sessionmaker[Session], settings: Settings, queue_name: str
) -> None:
    # The heartbeats failed during the outage too: a job whose beat looks stale then is not lost.
    add_worker(db_session, f"quiet-{queue_name}", queues=[queue_name], beat_age_s=60)
    job = running_job(db_session, queue_name, f"quiet-{queue_name}", beat_age_s=60)
    reachable = False

    def factory() -> Session:
        if not reachable:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        return session_maker()

    reconciler = Reconciler(settings, factory=factory)  # type: ignore[arg-type]
    assert reconciler.run_pass() is None  # the database is down
    reachable = True
    report = reconciler.run_pass()  # it is back: the outage ends here

    assert report is not None and report.requeued == 0
    assert (fresh(db_session, job.id).status, fresh(db_session, job.id).attempts) == ("running", 1)
