"""The reconciler's requeue is the job service's `requeue_job`: a lost job asked to stop ends `cancelled`."""

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
from services.jobs import service as jobs
from services.jobs.models import Job
from services.jobs.reconciler import reconcile_once
from tests.support.jobs import tiny_spec, unconsumed_queue


@pytest.fixture
def queue_name(service_settings: Settings) -> Iterator[str]:
    """A queue no worker consumes, emptied after the test."""
    with unconsumed_queue(service_settings.broker_url, "requeue") as name:
        yield name


def test_a_lost_job_whose_cancel_was_requested_is_cancelled_not_requeued(
    db_session: Session, service_settings: Settings, queue_name: str
) -> None:
    settings = service_settings.model_copy(update={"worker_dead_after_s": 15.0, "max_attempts": 3})
    device = devices.register_device(db_session, {"device": "cpu", "cpu_model": "requeue test CPU"})
    worker = f"dead-{queue_name}"
    devices.register_worker(
        db_session, name=worker, device_id=device.id, device="cpu", queues=[queue_name], hostname="h", pid=1
    )
    job = jobs.create_job(db_session, tiny_spec(seed=int(uuid.uuid4().int % 1000)))
    job.queue = queue_name
    db_session.commit()
    assert jobs.claim_job(db_session, job.id, worker_name=worker, device_id=device.id) is not None
    assert jobs.cancel_job(db_session, job.id).cancel_requested is True
    past = utcnow() - timedelta(seconds=60)  # the worker and the job both went silent a minute ago
    worker_row = next(w for w in devices.list_workers(db_session, device_id=device.id) if w.name == worker)
    worker_row.last_heartbeat = past
    db_session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=past))
    db_session.commit()

    report = reconcile_once(db_session, settings)

    after = db_session.get(Job, job.id, populate_existing=True)
    assert after is not None
    assert (after.status, after.attempts, after.finished_at is not None) == ("cancelled", 1, True)
    assert after.progress_message == f"cancelled: worker {worker} stopped sending heartbeats"
    assert report.cancelled >= 1  # this one, and any other lost job of the session's database asked to stop
    client = redis.Redis.from_url(settings.broker_url)
    try:
        assert client.llen(queue_name) == 0  # nothing published for it
    finally:
        client.close()
