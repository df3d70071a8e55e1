"""Jobs run on real `bpbench worker` processes through real Redis, on SQLite and on PostgreSQL.

Each job is created through the service layer and published to the broker exactly as the API does;
the worker subprocess claims it, runs the engine and records the outcome in the database. Tests marked
`every_broker` run over RabbitMQ as well (see tests/conftest.py); the others look into Redis's own lists.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.core.config import Settings
from services.core.queue import CONTROL_QUEUE, device_queue, publish_job
from services.devices.models import Device, Worker
from services.devices.service import register_device
from services.jobs import service as jobs
from services.jobs.models import Job
from services.jobs.runner import JobHeartbeats, job_heartbeats
from services.results.models import Result, Trial
from tests.support.jobs import tiny_spec, wait_for_job, wait_until
from tests.support.workers import WorkerProcess


def _queue_drained(broker_url: str, *queues: str) -> bool:
    """True when the queues hold no message and none is delivered-but-unacknowledged."""
    client = redis.Redis.from_url(broker_url)
    try:
        return all(client.llen(q) == 0 for q in queues) and client.hlen("unacked") == 0
    finally:
        client.close()


def _result_count(maker: sessionmaker[Session], job_id: str) -> int:
    with maker() as session:
        return int(
            session.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id)) or 0
        )


@pytest.mark.every_broker
def test_a_published_job_runs_on_the_worker_and_its_result_and_trials_are_recorded(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as session:
        job = jobs.submit_job(session, tiny_spec())
        # The worker may already have claimed it: the row was committed before it was published.
        assert (job.queue, job.published_at is not None) == ("cpu", True)

    done = wait_for_job(session_maker, job.id)

    assert done.status == "succeeded", done.error
    assert (done.progress, done.attempts, done.worker_name) == (1.0, 1, cpu_worker.name)
    assert done.device_id == cpu_worker.device_id
    assert done.started_at is not None and done.finished_at is not None
    assert done.created_at <= done.started_at <= done.finished_at
    with session_maker() as session:
        result = session.scalars(select(Result).where(Result.job_id == job.id)).one()
        trials = session.scalars(
            select(Trial).where(Trial.result_id == result.id).order_by(Trial.index)
        ).all()
    assert (result.kind, result.model_name, result.dataset, result.batch_size, result.dtype) == (
        "train",
        "mlp",
        "synthetic",
        32,
        "float32",
    )
    assert result.spec_hash == tiny_spec().spec_hash()
    assert result.device_id == cpu_worker.device_id
    assert 3 <= len(trials) <= 5  # min_repeats..max_repeats windows
    assert result.trial_count == len(trials)
    assert [t.series for t in trials] == ["samples_per_s"] * len(trials)
    assert all(t.samples_per_s is not None and t.samples_per_s > 0 for t in trials)
    values = sorted(t.samples_per_s for t in trials if t.samples_per_s is not None)
    assert result.samples_per_s is not None and values[0] <= result.samples_per_s <= values[-1]
    assert result.samples_per_s_ci_low is not None and result.samples_per_s_ci_high is not None
    assert result.samples_per_s_ci_low <= result.samples_per_s <= result.samples_per_s_ci_high
    assert result.metrics["steps"] == 20 and 0.0 <= result.metrics["test_accuracy"] <= 1.0


def test_a_duplicate_delivery_of_one_job_writes_one_result(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session], service_settings: Settings
) -> None:
    with session_maker() as session:
        job = jobs.submit_job(session, tiny_spec(seed=7))
    publish_job(job.id, job.queue)  # the same id delivered twice (at-least-once delivery)
    publish_job(job.id, job.queue)  # and a third time

    done = wait_for_job(session_maker, job.id)
    wait_until(
        lambda: _queue_drained(service_settings.broker_url, "cpu"),
        30,
        "the duplicate deliveries to be consumed",
    )

    assert (done.status, done.attempts) == ("succeeded", 1)
    assert _result_count(session_maker, job.id) == 1


@pytest.mark.every_broker
def test_a_job_aimed_at_one_device_runs_on_that_devices_worker(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session]
) -> None:
    # Its class, its own device queue, and the control queue the beat tick goes to.
    assert cpu_worker.queues == ["cpu", device_queue(cpu_worker.device_id), CONTROL_QUEUE]
    with session_maker() as session:
        job = jobs.submit_job(session, tiny_spec(seed=3), target_device_id=cpu_worker.device_id)
    assert job.queue == f"device.{cpu_worker.device_id}"

    done = wait_for_job(session_maker, job.id)

    assert done.status == "succeeded", done.error
    assert (done.target_device_id, done.device_id, done.worker_name) == (
        cpu_worker.device_id,
        cpu_worker.device_id,
        cpu_worker.name,
    )


def test_a_job_aimed_at_a_device_without_a_worker_waits_in_that_devices_queue(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session], service_settings: Settings
) -> None:
    other = Device(
        id="0000deadbeef",
        device_class="cpu",
        vendor="unknown",
        name="a CPU no worker serves",
        memory_bytes=None,
        software={},
        fingerprint={},
    )
    with session_maker() as session:
        session.merge(other)
        session.commit()
        job = jobs.submit_job(session, tiny_spec(seed=4), target_device_id=other.id)
        reference = jobs.submit_job(session, tiny_spec(seed=5))

    # Once a later job on the worker's own queue is done, the aimed one has still not been touched.
    assert wait_for_job(session_maker, reference.id).status == "succeeded"
    client = redis.Redis.from_url(service_settings.broker_url)
    try:
        waiting_messages = client.lrange(device_queue(other.id), 0, -1)
    finally:
        client.close()
    # The message names the job in its headers (argsrepr), so it is this job's message that waits there.
    assert sum(job.id.encode() in message for message in waiting_messages) == 1
    with session_maker() as session:
        waiting = jobs.get_job(session, job.id)
        assert waiting is not None
        assert (waiting.status, waiting.attempts, waiting.worker_name) == ("queued", 0, None)
        jobs.cancel_job(session, job.id)


def test_a_job_spelled_for_another_backend_waits_on_that_backends_queue_not_the_cpus(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session], service_settings: Settings
) -> None:
    # The same CPU, through XLA: a NumPy worker must not take it (its numbers would be NumPy's).
    with session_maker() as session:
        job = jobs.submit_job(session, tiny_spec(seed=6, device="xla:cpu:0"))
        reference = jobs.submit_job(session, tiny_spec(seed=7))
    assert (job.device_class, job.queue, reference.queue) == ("xla", "xla", "cpu")

    assert wait_for_job(session_maker, reference.id).status == "succeeded"
    client = redis.Redis.from_url(service_settings.broker_url)
    try:
        waiting_messages = client.lrange("xla", 0, -1)
    finally:
        client.close()
    assert sum(job.id.encode() in message for message in waiting_messages) == 1
    assert "xla" not in cpu_worker.queues
    with session_maker() as session:
        waiting = jobs.get_job(session, job.id)
        assert waiting is not None
        assert (waiting.status, waiting.attempts, waiting.worker_name) == ("queued", 0, None)
        jobs.cancel_job(session, job.id)


def test_a_job_that_cannot_run_is_marked_failed_with_a_readable_error(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session]
) -> None:
    spec = tiny_spec(dataset="mnist", dataset_path="/nonexistent/mnist-idx")
    with session_maker() as session:
        job = jobs.submit_job(session, spec)

    done = wait_for_job(session_maker, job.id)

    assert done.status == "failed"
    assert done.error is not None and "/nonexistent/mnist-idx" in done.error and "IDX" in done.error
    assert done.finished_at is not None
    assert _result_count(session_maker, job.id) == 0


def test_a_cancelled_queued_job_is_not_run_when_its_message_arrives(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session], service_settings: Settings
) -> None:
    with session_maker() as session:
        job = jobs.create_job(session, tiny_spec(seed=11))
        session.commit()
        cancelled = jobs.cancel_job(session, job.id)
        assert (cancelled.status, cancelled.finished_at is not None) == ("cancelled", True)

    publish_job(job.id, job.queue)  # the message was already on its way when the user cancelled
    wait_until(lambda: _queue_drained(service_settings.broker_url, "cpu"), 30, "the message to be consumed")

    with session_maker() as session:
        after = jobs.get_job(session, job.id)
        assert after is not None
        assert (after.status, after.attempts, after.worker_name) == ("cancelled", 0, None)
    assert _result_count(session_maker, job.id) == 0


def test_a_running_job_stops_soon_after_it_is_cancelled(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session]
) -> None:
    long_spec = tiny_spec(steps=1_000_000, seed=12)  # minutes of work if it were not stopped
    with session_maker() as session:
        job = jobs.submit_job(session, long_spec)
    wait_for_job(session_maker, job.id, statuses={"running"})

    with session_maker() as session:
        asked = jobs.cancel_job(session, job.id)
        assert (asked.status, asked.cancel_requested) == ("running", True)
    started = time.monotonic()
    done = wait_for_job(session_maker, job.id, timeout_s=15)

    assert done.status == "cancelled"
    assert time.monotonic() - started < 5.0
    assert done.progress < 1.0


def test_the_worker_registers_its_device_and_keeps_a_heartbeat(
    cpu_worker: WorkerProcess, session_maker: sessionmaker[Session]
) -> None:
    with session_maker() as session:
        device = session.get(Device, cpu_worker.device_id)
        worker = session.get(Worker, cpu_worker.name)
        assert device is not None and worker is not None
        assert (device.device_class, len(device.id)) == ("cpu", 12)
        assert device.name and device.vendor
        assert device.fingerprint["device"] == "cpu" and "numpy" in device.software
        assert worker.device_id == device.id and worker.stopped_at is None
        first_beat = worker.last_heartbeat

    def beat_advanced() -> bool:
        with session_maker() as session:
            row = session.get(Worker, cpu_worker.name)
            return row is not None and row.last_heartbeat >= first_beat + timedelta(seconds=1)

    wait_until(beat_advanced, 10, "a new heartbeat (interval 1 s)")


@pytest.mark.every_broker
def test_a_worker_stopped_with_sigterm_exits_cleanly_and_is_marked_stopped(
    worker_factory: Callable[..., WorkerProcess], session_maker: sessionmaker[Session]
) -> None:
    worker = worker_factory(threads=1)

    assert worker.stop() == 0

    with session_maker() as session:
        row = session.get(Worker, worker.name)
        assert row is not None and row.stopped_at is not None


# --- the job heartbeat (in this process, on this session's database) -----------------------------------

BEAT_S = 0.2


def _claimed(maker: sessionmaker[Session]) -> jobs.Claim:
    with maker() as session:
        fingerprint = {"device": "cpu", "cpu_model": f"Beat CPU {uuid.uuid4().hex[:8]}", "blas": []}
        device = register_device(session, fingerprint)
        job = jobs.create_job(session, tiny_spec())
        session.commit()
        claim = jobs.claim_job(session, job.id, worker_name="beat@test", device_id=device.id)
        assert claim is not None
        return claim


def _heartbeat_at(maker: sessionmaker[Session], job_id: str) -> datetime:
    with maker() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.heartbeat_at is not None
        return job.heartbeat_at


def test_a_watched_job_gets_a_heartbeat_every_interval_until_it_is_unwatched(
    session_maker: sessionmaker[Session],
) -> None:
    claim = _claimed(session_maker)
    claimed_at = _heartbeat_at(session_maker, claim.job_id)
    beats = JobHeartbeats(session_maker, BEAT_S)

    beats.watch(claim)
    first = wait_until(
        lambda: (at := _heartbeat_at(session_maker, claim.job_id)) > claimed_at and at, 5, "a first beat"
    )
    wait_until(lambda: _heartbeat_at(session_maker, claim.job_id) > first, 5, "a second beat")
    beats.unwatch(claim)
    time.sleep(BEAT_S)  # a beat being written at the unwatch may still land
    last = _heartbeat_at(session_maker, claim.job_id)
    time.sleep(3 * BEAT_S)

    assert _heartbeat_at(session_maker, claim.job_id) == last
    assert beats.watched() == []


def test_a_job_that_is_no_longer_this_attempts_is_dropped_by_its_next_beat(
    session_maker: sessionmaker[Session],
) -> None:
    claim = _claimed(session_maker)
    beats = JobHeartbeats(session_maker, BEAT_S)
    beats.watch(claim)
    with session_maker() as session:
        assert jobs.mark_cancelled(session, claim.job_id, attempt=claim.attempt)
    cancelled_at = _heartbeat_at(session_maker, claim.job_id)

    wait_until(lambda: beats.watched() == [], 5, "the beat to drop the cancelled job")

    assert _heartbeat_at(session_maker, claim.job_id) == cancelled_at  # fenced: the beat wrote nothing


def test_one_heartbeat_thread_serves_every_job_of_a_process(
    session_maker: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    start = threading.Thread.start

    def counted_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted_start)
    claims = [_claimed(session_maker) for _ in range(3)]

    for claim in claims:  # one job after another, as a pool process runs them
        beats = job_heartbeats(session_maker, BEAT_S)
        beats.watch(claim)
        assert beats.watched() == [(claim.job_id, claim.attempt)]
        beats.unwatch(claim)

    assert started.count("job-heartbeats") <= 1  # none if an earlier test of this process started it
    assert job_heartbeats(session_maker, BEAT_S).watched() == []


def test_a_forked_pool_process_gets_a_heartbeat_of_its_own(session_maker: sessionmaker[Session]) -> None:
    beats = job_heartbeats(session_maker, BEAT_S)
    claim = _claimed(session_maker)
    beats.watch(claim)  # the parent's thread is running, and its registry holds this instance
    try:
        pid = os.fork()
        if pid == 0:  # the child: no database use, and out without any cleanup
            mine = job_heartbeats(session_maker, BEAT_S)
            os._exit(0 if mine is not beats and mine.watched() == [] else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        beats.unwatch(claim)

    assert os.waitstatus_to_exitcode(status) == 0
