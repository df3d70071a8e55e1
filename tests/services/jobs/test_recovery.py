"""Recovery at `bpbench up` start: the requeue of the job service in its recovery mode.

Each test has a database of its own (SQLite and PostgreSQL), because recovery takes back every job left
`running` in the database, and the real Redis broker of the session, on a queue no worker consumes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core import queue
from services.core.config import Settings
from services.core.db import make_engine
from services.core.migrate import upgrade_to_head
from services.devices import service as devices
from services.jobs import service as jobs
from services.jobs.models import Job
from services.jobs.recovery import INTERRUPTED_REASON, recover
from tests.support.jobs import tiny_spec, unconsumed_queue

MAX_ATTEMPTS = 3


@pytest.fixture
def settings(empty_database_url: str, redis_broker_url: str, tmp_path: Path) -> Iterator[Settings]:
    """A database of this test only, migrated, and the session's Redis broker for the client."""
    upgrade_to_head(empty_database_url)
    settings = Settings(
        database_url=empty_database_url,
        broker_url=redis_broker_url,
        data_dir=tmp_path,
        max_attempts=MAX_ATTEMPTS,
    )
    before = (queue._app, queue._app_config)
    queue.configure(settings)  # as `bpbench up` does before it recovers
    yield settings
    queue._app, queue._app_config = before


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    engine = make_engine(settings.database_url)
    with Session(engine, expire_on_commit=False) as session:
        yield session
    engine.dispose()


@pytest.fixture
def queue_name(redis_broker_url: str) -> Iterator[str]:
    """A queue no worker consumes, emptied after the test."""
    with unconsumed_queue(redis_broker_url, "recovery") as name:
        yield name


def messages_for(broker_url: str, queue_name: str, job_id: str) -> int:
    client = redis.Redis.from_url(broker_url)
    try:
        return sum(job_id.encode() in message for message in client.lrange(queue_name, 0, -1))
    finally:
        client.close()


def gone_worker(session: Session) -> tuple[str, str]:
    """A worker that registered, then went away (its process and its `bpbench up` are gone)."""
    device = devices.register_device(session, {"device": "cpu", "cpu_model": "recovery test CPU"})
    name = f"gone-{uuid.uuid4().hex[:6]}@test"
    row = devices.register_worker(
        session, name=name, device_id=device.id, device="cpu", queues=["cpu"], hostname="h", pid=1
    )
    devices.mark_worker_stopped(session, name, pid=1, started_at=row.started_at)
    return name, device.id


def queued_job(session: Session, queue_name: str) -> str:
    job = jobs.create_job(session, tiny_spec())
    job.queue = queue_name
    session.commit()
    return job.id


def fresh(session: Session, job_id: str) -> Job:
    job = session.scalars(select(Job).where(Job.id == job_id).execution_options(populate_existing=True)).one()
    session.rollback()
    return job


def test_a_job_that_keeps_killing_bpbench_up_ends_failed_after_max_attempts(
    session: Session, settings: Settings, queue_name: str
) -> None:
    worker, device_id = gone_worker(session)
    job_id = queued_job(session, queue_name)

    for start in range(1, MAX_ATTEMPTS + 1):
        # The stack took the job, and the job brought the stack down with it.
        claim = jobs.claim_job(session, job_id, worker_name=worker, device_id=device_id)
        assert claim is not None and claim.attempt == start
        running = fresh(session, job_id)
        assert (running.worker_name, running.device_id) == (worker, device_id)
        assert running.started_at is not None and running.heartbeat_at is not None

        done = recover(session, settings)  # the next `bpbench up` starts

        job = fresh(session, job_id)
        if start < MAX_ATTEMPTS:
            assert (done.requeued, done.failed, done.cancelled, done.published) == (1, 0, 0, 1)
            assert (job.status, job.attempts) == ("queued", start)
            assert (job.worker_name, job.device_id, job.started_at, job.heartbeat_at) == (
                None,
                None,
                None,
                None,
            )
            assert job.published_at is not None
            assert job.progress_message == f"requeued after attempt {start}: {INTERRUPTED_REASON}"
            assert messages_for(settings.broker_url, queue_name, job_id) == start

    assert (done.requeued, done.failed, done.cancelled, done.published) == (0, 1, 0, 0)
    assert (job.status, job.attempts) == ("failed", MAX_ATTEMPTS)
    assert job.error == f"gave up after {MAX_ATTEMPTS} attempt(s): {INTERRUPTED_REASON}"
    assert job.finished_at is not None
    assert messages_for(settings.broker_url, queue_name, job_id) == MAX_ATTEMPTS - 1
    # A further start finds nothing to recover, and nobody can claim the job again.
    assert recover(session, settings).changed == 0
    assert jobs.claim_job(session, job_id, worker_name=worker, device_id=device_id) is None


def test_a_running_job_asked_to_stop_is_cancelled_at_recovery_not_requeued(
    session: Session, settings: Settings, queue_name: str
) -> None:
    worker, device_id = gone_worker(session)
    job_id = queued_job(session, queue_name)
    assert jobs.claim_job(session, job_id, worker_name=worker, device_id=device_id) is not None
    assert jobs.cancel_job(session, job_id).cancel_requested is True

    done = recover(session, settings)

    job = fresh(session, job_id)
    assert (done.requeued, done.failed, done.cancelled, done.published) == (0, 0, 1, 0)
    assert (job.status, job.progress_message) == ("cancelled", f"cancelled: {INTERRUPTED_REASON}")
    assert job.finished_at is not None
    assert messages_for(settings.broker_url, queue_name, job_id) == 0


def test_recovery_publishes_queued_jobs_that_were_never_published(
    session: Session, settings: Settings, queue_name: str
) -> None:
    job_id = queued_job(session, queue_name)  # committed, never published (the broker was down)

    done = recover(session, settings)

    assert (done.requeued, done.published) == (0, 1)
    assert fresh(session, job_id).published_at is not None
    assert messages_for(settings.broker_url, queue_name, job_id) == 1
