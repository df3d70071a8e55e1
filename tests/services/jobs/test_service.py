"""The job life cycle in the service layer: every change is one conditional update, fenced by the attempt."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.core.db import utcnow
from services.devices.models import Device, Worker
from services.devices.service import register_device, register_worker
from services.jobs import service as jobs
from services.jobs.models import Job
from services.jobs.reconciler import lost_running_jobs, unpublished_jobs
from services.results.models import Result, SpecDeviceStats, Trial
from services.results.service import refresh_spec_device_stats
from tests.support.jobs import tiny_spec


def _document(median: float = 1000.0) -> dict[str, Any]:
    """A train result document as the engine returns it (trimmed to what the service reads)."""
    return {
        "kind": "train",
        "metrics": {"steps": 20, "samples_per_s": {"median": median}},
        "statistics": {"samples_per_s": {"median": median, "ci95": [median - 10, median + 10]}},
        "trials": [median - 10, median, median + 10],
        "fingerprint": {"device": "cpu"},
        "engine_time_s": 0.25,
    }


@pytest.fixture
def device(db_session: Session) -> Device:
    """A device of this test only (its own CPU model, so its id is new)."""
    fingerprint = {"device": "cpu", "cpu_model": f"Test CPU {uuid.uuid4().hex[:8]}", "blas": []}
    return register_device(db_session, fingerprint)


def _queued(session: Session, **spec: Any) -> str:
    job = jobs.create_job(session, tiny_spec(**spec))
    session.commit()
    return job.id


def _claim(session: Session, job_id: str, device: Device, worker: str = "w1@test") -> jobs.Claim:
    claim = jobs.claim_job(session, job_id, worker_name=worker, device_id=device.id)
    assert claim is not None
    return claim


def _completed(session: Session, device: Device, seed: int, median: float = 1000.0) -> Result:
    """A train job of the spec with this seed, claimed for `device` and completed."""
    job_id = _queued(session, seed=seed)
    claim = _claim(session, job_id, device)
    result = jobs.complete_job(session, job_id, _document(median), attempt=claim.attempt)
    assert result is not None
    return result


def _spec_device_stats(session: Session, spec_hash: str) -> list[tuple[Any, ...]]:
    """The `spec_device_stats` rows of a spec: device, count, newest, and the spec's filter columns."""
    rows = session.scalars(
        select(SpecDeviceStats)
        .where(SpecDeviceStats.spec_hash == spec_hash)
        .order_by(SpecDeviceStats.device_id)
        .execution_options(populate_existing=True)
    ).all()
    return [
        (r.device_id, r.result_count, r.newest_at, r.kind, r.model_name, r.dataset, r.batch_size, r.dtype)
        for r in rows
    ]


def test_a_job_is_claimed_once_and_a_second_claim_changes_nothing(
    db_session: Session, device: Device
) -> None:
    job_id = _queued(db_session)

    first = jobs.claim_job(db_session, job_id, worker_name="w1@test", device_id=device.id)
    second = jobs.claim_job(db_session, job_id, worker_name="w2@test", device_id=device.id)

    assert first is not None and first.attempt == 1 and first.spec["steps"] == 20
    assert second is None
    job = db_session.get(Job, job_id, populate_existing=True)
    assert job is not None
    assert (job.status, job.worker_name, job.device_id, job.attempts) == ("running", "w1@test", device.id, 1)


def test_completing_twice_writes_one_result_with_its_trials(db_session: Session, device: Device) -> None:
    job_id = _queued(db_session)
    claim = _claim(db_session, job_id, device)

    result = jobs.complete_job(db_session, job_id, _document(), attempt=claim.attempt)
    again = jobs.complete_job(db_session, job_id, _document(2000.0), attempt=claim.attempt)

    assert result is not None and again is None
    assert db_session.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id)) == 1
    stored = db_session.scalars(select(Result).where(Result.job_id == job_id)).one()
    assert (stored.samples_per_s, stored.samples_per_s_ci_low, stored.samples_per_s_ci_high) == (
        1000.0,
        990.0,
        1010.0,
    )
    assert (stored.device_id, stored.trial_count, stored.model_name, stored.dataset) == (
        device.id,
        3,
        "mlp",
        "synthetic",
    )
    trials = db_session.scalars(select(Trial).where(Trial.result_id == stored.id).order_by(Trial.index)).all()
    assert [(t.series, t.index, t.samples_per_s) for t in trials] == [
        ("samples_per_s", 0, 990.0),
        ("samples_per_s", 1, 1000.0),
        ("samples_per_s", 2, 1010.0),
    ]
    job = jobs.get_job(db_session, job_id)
    assert job is not None and (job.status, job.progress) == ("succeeded", 1.0)


def test_named_trial_series_are_kept_and_only_samples_per_s_is_pooled(
    db_session: Session, device: Device
) -> None:
    job_id = _queued(db_session, kind="gemm", gemm_sizes=[64, 128])
    claim = _claim(db_session, job_id, device)
    document = {
        "kind": "gemm",
        "metrics": {"peak_flops_per_s": 5e9},
        "trials": {"64": [1e9, 2e9], "128": [5e9]},
    }

    result = jobs.complete_job(db_session, job_id, document, attempt=claim.attempt)

    assert result is not None and (result.samples_per_s, result.model_name, result.trial_count) == (
        None,
        None,
        3,
    )
    trials = db_session.scalars(select(Trial).where(Trial.result_id == result.id)).all()
    assert sorted((t.series, t.index, t.value) for t in trials) == [
        ("128", 0, 5e9),
        ("64", 0, 1e9),
        ("64", 1, 2e9),
    ]
    assert all(t.samples_per_s is None for t in trials)


def test_an_older_attempt_cannot_write_over_a_newer_one(db_session: Session, device: Device) -> None:
    job_id = _queued(db_session)
    old = _claim(db_session, job_id, device, "lost@test")
    assert (
        jobs.requeue_job(db_session, job_id, attempt=old.attempt, reason="worker lost", max_attempts=3)
        == "queued"
    )
    new = _claim(db_session, job_id, device, "other@test")

    assert new.attempt == 2
    assert jobs.update_progress(db_session, job_id, 0.5, "half", attempt=old.attempt) is False
    assert jobs.should_stop(db_session, job_id, attempt=old.attempt) is True
    assert jobs.complete_job(db_session, job_id, _document(), attempt=old.attempt) is None
    assert jobs.fail_job(db_session, job_id, "late failure", attempt=old.attempt) is False
    assert jobs.complete_job(db_session, job_id, _document(), attempt=new.attempt) is not None
    job = jobs.get_job(db_session, job_id)
    assert job is not None and (job.status, job.worker_name, job.attempts) == ("succeeded", "other@test", 2)


def test_a_job_is_failed_with_the_reason_once_its_attempts_are_used_up(
    db_session: Session, device: Device
) -> None:
    job_id = _queued(db_session)
    for attempt in (1, 2):
        assert _claim(db_session, job_id, device).attempt == attempt
        assert (
            jobs.requeue_job(db_session, job_id, attempt=attempt, reason="worker lost", max_attempts=3)
            == "queued"
        )
    _claim(db_session, job_id, device)

    status = jobs.requeue_job(db_session, job_id, attempt=3, reason="worker w1@test lost", max_attempts=3)

    job = jobs.get_job(db_session, job_id)
    assert status == "failed" and job is not None
    assert (job.status, job.error) == ("failed", "gave up after 3 attempt(s): worker w1@test lost")


def test_a_queued_job_is_cancelled_at_once_and_a_running_one_is_asked_to_stop(
    db_session: Session, device: Device
) -> None:
    queued_id = _queued(db_session)
    running_id = _queued(db_session, seed=1)
    claim = _claim(db_session, running_id, device)
    assert jobs.should_stop(db_session, running_id, attempt=claim.attempt) is False

    queued = jobs.cancel_job(db_session, queued_id)
    running = jobs.cancel_job(db_session, running_id)

    assert (queued.status, queued.finished_at is not None) == ("cancelled", True)
    assert (running.status, running.cancel_requested) == ("running", True)
    assert jobs.should_stop(db_session, running_id, attempt=claim.attempt) is True
    assert jobs.mark_cancelled(db_session, running_id, attempt=claim.attempt) is True
    assert jobs.claim_job(db_session, queued_id, worker_name="w@test", device_id=device.id) is None
    with pytest.raises(jobs.JobNotFound, match="no job with id 'missing'"):
        jobs.cancel_job(db_session, "missing")


def _lost(session: Session) -> set[str]:
    return {job.id for job in lost_running_jobs(session, dead_after_s=30, limit=100_000, now=utcnow())}


def test_the_reconciler_queries_find_lost_and_unpublished_jobs(db_session: Session, device: Device) -> None:
    worker = f"silent-{uuid.uuid4().hex[:6]}@test"
    register_worker(
        db_session, name=worker, device_id=device.id, device="cpu", queues=["cpu"], hostname="h", pid=1
    )
    lost_id = _queued(db_session)
    _claim(db_session, lost_id, device, worker)
    unpublished_id = _queued(db_session, seed=2)

    assert lost_id not in _lost(db_session)
    row = db_session.get(Worker, worker)
    assert row is not None
    row.last_heartbeat = utcnow() - timedelta(seconds=120)
    db_session.commit()
    # A silent worker row alone takes nothing: the job's own heartbeat (its pool child) still beats.
    assert lost_id not in _lost(db_session)
    db_session.execute(
        update(Job).where(Job.id == lost_id).values(heartbeat_at=utcnow() - timedelta(seconds=120))
    )
    db_session.commit()

    assert lost_id in _lost(db_session)
    later = utcnow() + timedelta(seconds=60)  # past the grace a submitter gets to publish its own job
    assert unpublished_id in {job.id for job in unpublished_jobs(db_session, limit=100_000, now=later)}


def test_jobs_are_listed_newest_first_with_filters(db_session: Session, device: Device) -> None:
    ids = [_queued(db_session, seed=100 + i, device="gpu") for i in range(3)]

    listed = jobs.list_jobs(db_session, status="queued", kind="train", device="gpu", limit=1000)

    positions = [job.id for job in listed if job.id in ids]
    assert positions == list(reversed(ids))
    assert jobs.count_jobs(db_session, status=["queued"], device="gpu") >= 3
    with pytest.raises(ValueError, match="unknown job status 'done'; accepted: queued, running"):
        jobs.list_jobs(db_session, status="done")


def test_each_completed_result_is_counted_for_its_spec_and_device(
    db_session: Session, device: Device
) -> None:
    other = register_device(db_session, {"device": "cpu", "cpu_model": f"Other CPU {uuid.uuid4().hex[:8]}"})
    seed = uuid.uuid4().int % 2**32  # a spec of this test only
    first = _completed(db_session, device, seed, 900.0)
    second = _completed(db_session, device, seed, 1100.0)
    elsewhere = _completed(db_session, other, seed)
    spec = ("train", "mlp", "synthetic", 32, "float32")

    counted = _spec_device_stats(db_session, first.spec_hash)

    assert first.created_at < second.created_at
    assert counted == sorted(
        [(device.id, 2, second.created_at, *spec), (other.id, 1, elsewhere.created_at, *spec)]
    )
    refresh_spec_device_stats(db_session, [first.spec_hash])  # rebuilt from `results`: the same rows
    assert _spec_device_stats(db_session, first.spec_hash) == counted
    db_session.rollback()


def test_a_completion_that_writes_no_result_counts_nothing(db_session: Session, device: Device) -> None:
    seed = uuid.uuid4().int % 2**32
    result = _completed(db_session, device, seed)

    assert jobs.complete_job(db_session, result.job_id, _document(), attempt=1) is None
    stale = _queued(db_session, seed=seed)
    claim = _claim(db_session, stale, device)
    assert jobs.complete_job(db_session, stale, _document(), attempt=claim.attempt + 1) is None

    assert _spec_device_stats(db_session, result.spec_hash) == [
        (device.id, 1, result.created_at, "train", "mlp", "synthetic", 32, "float32")
    ]
    assert jobs.fail_job(db_session, stale, "test over", attempt=claim.attempt)  # not left running


def test_a_gemm_result_keeps_its_peak_in_a_column_and_is_no_compare_candidate(
    db_session: Session, device: Device
) -> None:
    job_id = _queued(db_session, kind="gemm", gemm_sizes=[64], seed=uuid.uuid4().int % 2**32)
    claim = _claim(db_session, job_id, device)
    document = {"kind": "gemm", "metrics": {"peak_flops_per_s": 7.5e9}, "trials": {"64": [7e9, 7.5e9]}}

    result = jobs.complete_job(db_session, job_id, document, attempt=claim.attempt)

    assert result is not None and (result.kind, result.peak_flops_per_s) == ("gemm", 7.5e9)
    stored = db_session.scalar(select(Result.peak_flops_per_s).where(Result.id == result.id))
    assert stored == 7.5e9
    assert _spec_device_stats(db_session, result.spec_hash) == []  # no samples/s figure to compare


def test_concurrent_completions_of_one_spec_on_one_device_are_both_counted(
    session_maker: sessionmaker[Session], db_session: Session, device: Device
) -> None:
    seed = uuid.uuid4().int % 2**32
    claims = [
        _claim(db_session, job_id, device) for job_id in [_queued(db_session, seed=seed) for _ in range(2)]
    ]
    start = threading.Barrier(len(claims))
    stored: list[Result | None] = []

    def complete(claim: jobs.Claim) -> None:
        with session_maker() as session:
            start.wait(timeout=30)
            stored.append(jobs.complete_job(session, claim.job_id, _document(), attempt=claim.attempt))

    threads = [threading.Thread(target=complete, args=(claim,)) for claim in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(stored) == 2 and all(result is not None for result in stored)
    newest = max(result.created_at for result in stored if result is not None)
    assert [row[:3] for row in _spec_device_stats(db_session, tiny_spec(seed=seed).spec_hash())] == [
        (device.id, 2, newest)
    ]


def test_completing_an_unknown_job_raises_job_not_found(db_session: Session) -> None:
    with pytest.raises(jobs.JobNotFound, match="no job with id 'missing'"):
        jobs.complete_job(db_session, "missing", _document(), attempt=1)


def test_a_result_takes_the_device_of_the_row_not_of_a_stale_copy_in_the_session(
    db_session: Session, device: Device
) -> None:
    job_id = _queued(db_session)
    stale = db_session.get(Job, job_id)  # loaded while queued: no device yet
    assert stale is not None and stale.device_id is None
    claim = _claim(db_session, job_id, device)

    result = jobs.complete_job(db_session, job_id, _document(), attempt=claim.attempt)

    assert result is not None and result.device_id == device.id
    assert (stale.status, stale.device_id) == ("succeeded", device.id)


def test_the_single_statement_writes_leave_the_sessions_next_transaction_transactional(
    db_session: Session, device: Device
) -> None:
    # claim, progress and the heartbeat run in autocommit; the pooled connection must not stay that way.
    job_id = _queued(db_session)
    claim = _claim(db_session, job_id, device)
    assert jobs.update_progress(db_session, job_id, 0.5, "half", attempt=claim.attempt)
    assert jobs.touch_job(db_session, job_id, attempt=claim.attempt)

    db_session.execute(update(Job).where(Job.id == job_id).values(progress_message="never committed"))
    db_session.rollback()

    job = db_session.get(Job, job_id, populate_existing=True)
    assert job is not None and (job.progress, job.progress_message) == (0.5, "half")
