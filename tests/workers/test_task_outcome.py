"""The Celery task mirrors the job row without touching the exactly-once machinery.

A failed job is a failed task (its message still acknowledged once, no retry, the row the truth), and every
message of a job, first publication or requeue, carries the job id as its task id. Real `bpbench worker`,
real Redis: the tests read Redis's own lists and its `unacked` hash.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from services.core.config import Settings
from services.core.db import utcnow
from services.core.queue import RUN_JOB_TASK, get_celery_app, publish_job, publish_jobs
from services.devices import service as devices
from services.jobs import service as jobs
from services.jobs.models import Job
from services.jobs.reconciler import reconcile_once
from tests.support.jobs import DIVERGED_ERROR, DIVERGING, tiny_spec, wait_for_job, wait_until
from tests.support.workers import WorkerProcess


@pytest.fixture
def broker(service_settings: Settings) -> Iterator[redis.Redis]:
    """A client of the session's Redis broker."""
    client = redis.Redis.from_url(service_settings.broker_url)
    yield client
    client.close()


@pytest.fixture
def queue_name(broker: redis.Redis) -> Iterator[str]:
    """A queue no worker consumes, emptied after the test."""
    name = f"device.task-ids-{uuid.uuid4().hex[:8]}"
    yield name
    broker.delete(name)


def _task_ids(broker: redis.Redis, queue: str) -> list[tuple[str, str]]:
    """(task name, task id) of each message waiting in a Redis queue, oldest first."""
    messages = [json.loads(raw) for raw in reversed(broker.lrange(queue, 0, -1))]
    return [(m["headers"]["task"], m["headers"]["id"]) for m in messages]


def test_a_failed_job_is_a_failed_task_and_its_message_is_acknowledged_once(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session], broker: redis.Redis
) -> None:
    with session_maker() as session:
        job = jobs.submit_job(session, tiny_spec(**DIVERGING))

    failed = wait_for_job(session_maker, job.id)
    wait_until(
        lambda: broker.llen("cpu") == 0 and broker.hlen("unacked") == 0,
        30,
        "the job's message to be acknowledged",
    )
    time.sleep(3)  # a message left unacknowledged or requeued would be delivered again by now

    assert (failed.status, failed.error, failed.attempts) == ("failed", DIVERGED_ERROR, 1)
    assert (broker.llen("cpu"), broker.hlen("unacked")) == (0, 0)
    with session_maker() as session:
        again = session.get(Job, job.id)
        assert again is not None and (again.status, again.attempts) == ("failed", 1)
    # Celery's own word for it: the task, named by the job id, raised the failure it expects (no retry).
    expected = f"Task {RUN_JOB_TASK}[{job.id}] raised expected: JobFailed('{DIVERGED_ERROR}')"
    wait_until(lambda: expected in cpu_worker.log(40_000), 10, "the worker to log the failed task")
    assert f"Task {RUN_JOB_TASK}[{job.id}] retry" not in cpu_worker.log(40_000)


def test_publishing_a_job_sends_its_job_id_as_the_task_id(broker: redis.Redis, queue_name: str) -> None:
    one, batch = str(uuid.uuid4()), [str(uuid.uuid4()), str(uuid.uuid4())]

    publish_job(one, queue_name)
    sent, error = publish_jobs([(job_id, queue_name, None) for job_id in batch])

    assert (sent, error) == (2, None)
    assert _task_ids(broker, queue_name) == [(RUN_JOB_TASK, job_id) for job_id in [one, *batch]]


def _without_ids(raw: bytes, job_id: str) -> dict[str, object]:
    """A Redis message as JSON with its job id (task id, root id, correlation id, argsrepr, body) and its
    per-publication fields (delivery tag, origin) blanked, to compare the shape of two messages."""
    text = raw.decode().replace(job_id, "JOB")
    message = json.loads(text)
    message["properties"]["delivery_tag"] = "TAG"
    message["headers"]["origin"] = "ORIGIN"
    body = json.loads(base64.b64decode(message["body"]).decode().replace(job_id, "JOB"))
    message["body"] = body
    return message


def test_a_batch_is_published_in_one_pipeline_with_the_messages_a_single_publish_sends(
    broker: redis.Redis, queue_name: str
) -> None:
    single, batch = str(uuid.uuid4()), [str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())]
    app = get_celery_app()
    with app.producer_or_acquire() as producer:
        pipelined = producer.supports_batch_publish  # kombu pipelines a batch only when retries are off

    publish_job(single, queue_name, time_limit_s=60.0)
    sent, error = publish_jobs([(job_id, queue_name, 60.0) for job_id in batch])
    raw = list(reversed(broker.lrange(queue_name, 0, -1)))

    assert pipelined is True
    assert (sent, error) == (3, None)
    shapes = [_without_ids(message, job_id) for message, job_id in zip(raw, [single, *batch], strict=True)]
    assert shapes[1:] == [shapes[0]] * 3
    assert shapes[0]["body"] == [
        ["JOB"],
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]


def test_a_requeued_job_is_republished_under_the_same_task_id(
    db_session: Session, service_settings: Settings, broker: redis.Redis, queue_name: str
) -> None:
    settings = service_settings.model_copy(update={"worker_dead_after_s": 15.0, "max_attempts": 3})
    device = devices.register_device(db_session, {"device": "cpu", "cpu_model": "task id test CPU"})
    job = jobs.create_job(db_session, tiny_spec(seed=int(uuid.uuid4().int % 1000)))
    job.queue = queue_name
    db_session.commit()
    publish_job(job.id, queue_name)  # its first publication, taken by a worker that then went silent
    broker.delete(queue_name)
    assert jobs.claim_job(db_session, job.id, worker_name=f"gone-{queue_name}", device_id=device.id)
    past = utcnow() - timedelta(seconds=60)
    db_session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=past))
    db_session.commit()

    report = reconcile_once(db_session, settings)

    after = db_session.get(Job, job.id, populate_existing=True)
    assert after is not None and (after.status, after.attempts) == ("queued", 1)
    assert report.requeued >= 1
    assert _task_ids(broker, queue_name) == [(RUN_JOB_TASK, job.id)]
