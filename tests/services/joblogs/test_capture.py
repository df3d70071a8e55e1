"""The worker side of a job's log, on both databases without a worker: what a capture keeps, how it is
bounded, and that a database that refuses it never reaches the job."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.core.db import make_engine
from services.joblogs import service
from services.joblogs.capture import HEAD_LINES, TAIL_LINES, JobCapture, LossCurveRecorder
from services.joblogs.models import (
    MAX_CURVE_POINTS,
    MAX_LINES_PER_ATTEMPT,
    MAX_MESSAGE_CHARS,
    JobLogLine,
    JobLossCurve,
)
from services.jobs import service as jobs
from tests.support.jobs import tiny_spec, wait_until

log = logging.getLogger("tests.joblogs")


@pytest.fixture
def job_id(session_maker: sessionmaker[Session]) -> str:
    """A job row the lines can belong to (created, never published: no worker takes it)."""
    with session_maker() as session:
        job = jobs.create_job(session, tiny_spec())
        session.commit()
        return job.id


@pytest.fixture(autouse=True)
def info_level() -> Iterator[None]:
    """The root logger passes INFO, as a worker's does (`configure_logging`)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    yield
    root.setLevel(level)


def stored(session_maker: sessionmaker[Session], job_id: str) -> list[JobLogLine]:
    with session_maker() as session:
        return service.log_lines(session, job_id)


def test_the_lines_of_the_capturing_thread_are_stored_with_their_attempt_level_and_logger(
    session_maker: sessionmaker[Session], job_id: str
) -> None:
    with JobCapture(session_maker, job_id, 2):
        log.info("loading %s", "synthetic")
        log.warning("slow step")
        other = threading.Thread(target=lambda: log.info("a heartbeat thread's line"))
        other.start()
        other.join()
    lines = stored(session_maker, job_id)
    assert [(x.attempt, x.level, x.logger, x.message) for x in lines] == [
        (2, "INFO", "tests.joblogs", "loading synthetic"),
        (2, "WARNING", "tests.joblogs", "slow step"),
    ]
    assert lines[0].id < lines[1].id
    assert lines[0].logged_at <= lines[1].logged_at


def test_lines_are_written_while_the_attempt_runs_not_only_at_its_end(
    session_maker: sessionmaker[Session], job_id: str
) -> None:
    with JobCapture(session_maker, job_id, 1, flush_interval_s=0.1):
        log.info("step 1")
        seen = wait_until(lambda: stored(session_maker, job_id), 10, "the first line in the database")
        assert [x.message for x in seen] == ["step 1"]


def test_an_exception_is_stored_with_its_traceback_and_secrets_redacted(
    session_maker: sessionmaker[Session], job_id: str
) -> None:
    with JobCapture(session_maker, job_id, 1):
        try:
            raise RuntimeError("connect to postgresql://bench:hunter2@db/x failed")
        except RuntimeError:
            log.exception("job failed with token bpb_abcdefghijkl")
    (line,) = stored(session_maker, job_id)
    assert line.level == "ERROR"
    assert line.message.startswith("job failed with token bpb_***\nTraceback (most recent call last):")
    assert "RuntimeError: connect to postgresql://bench:***@db/x failed" in line.message
    assert "hunter2" not in line.message and "abcdefghijkl" not in line.message


def test_a_long_message_keeps_its_start_and_its_end(
    session_maker: sessionmaker[Session], job_id: str
) -> None:
    text = "start " + "x" * 5000 + " the end"
    with JobCapture(session_maker, job_id, 1):
        log.info(text)
    (line,) = stored(session_maker, job_id)
    assert len(line.message) == MAX_MESSAGE_CHARS
    assert line.message.startswith("start xxx") and line.message.endswith("xxx the end")
    assert f"… {len(text) - MAX_MESSAGE_CHARS} characters cut …" in line.message


def test_an_attempt_keeps_its_first_and_last_lines_and_says_how_many_it_left_out(
    session_maker: sessionmaker[Session], job_id: str
) -> None:
    with JobCapture(session_maker, job_id, 1):
        for i in range(1, 1201):
            log.info("line %d", i)
    messages = [x.message for x in stored(session_maker, job_id)]
    assert len(messages) == MAX_LINES_PER_ATTEMPT == HEAD_LINES + 1 + TAIL_LINES
    assert messages[:HEAD_LINES] == [f"line {i}" for i in range(1, HEAD_LINES + 1)]
    left_out = 1200 - HEAD_LINES - TAIL_LINES
    assert messages[HEAD_LINES] == (
        f"… {left_out} line(s) not stored: an attempt keeps its first {HEAD_LINES} and its last "
        f"{TAIL_LINES} lines …"
    )
    assert messages[HEAD_LINES + 1 :] == [f"line {i}" for i in range(1200 - TAIL_LINES + 1, 1201)]


def test_a_database_that_refuses_the_lines_never_reaches_the_job(tmp_path: Path, job_id: str) -> None:
    # A database without the tables: every write of the capture fails.
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    broken = sessionmaker(bind=engine)
    try:
        with JobCapture(broken, job_id, 1, flush_interval_s=0.05) as capture:
            for i in range(20):
                log.info("line %d", i)
                capture.progress(0.1, f"step {i + 1}/20, loss {2.5 - i / 100:.4f}")
            assert capture.flush() is False
        # The job went on: the capture kept collecting and closed without raising.
        assert capture.points()[-1] == [20, 2.31]
    finally:
        engine.dispose()


def test_the_train_reports_become_a_loss_curve_of_the_attempt(
    session_maker: sessionmaker[Session], job_id: str
) -> None:
    with JobCapture(session_maker, job_id, 1) as capture:
        capture.progress(0.0, "train: starting")
        capture.progress(0.0, "loading synthetic")
        for step in (10, 20, 30):
            capture.progress(step / 30, f"step {step}/30, loss {3.0 - step / 20:.4f}")
    with session_maker() as session:
        curve = service.latest_loss_curve(session, job_id)
    assert curve is not None
    assert (curve.attempt, curve.total_steps) == (1, 30)
    assert curve.points == [[10, 2.5], [20, 2.0], [30, 1.5]]


def test_a_non_finite_loss_and_other_messages_are_no_points() -> None:
    recorder = LossCurveRecorder()
    assert recorder.offer("step 5/10, loss nan") is True  # a diverged point is not drawn
    assert recorder.points() == []
    assert recorder.offer("evaluating") is False


def test_a_repeated_loss_stays_one_point_at_the_step_it_was_first_reported() -> None:
    recorder = LossCurveRecorder()
    for message in ("step 3/900, loss 2.3000", "step 6/900, loss 2.3000", "step 12/900, loss 1.9000"):
        recorder.offer(message)
    assert recorder.points() == [[3, 2.3], [12, 1.9]]
    assert recorder.total_steps == 900


def test_the_loss_curve_stays_within_its_bound_evenly_and_ends_at_the_newest_point() -> None:
    recorder = LossCurveRecorder()
    for step in range(1, 10_001):
        recorder.add(step, 1.0 / step, 10_000)
    points = recorder.points()
    assert len(points) <= MAX_CURVE_POINTS
    assert len(points) > MAX_CURVE_POINTS // 2
    assert points[0] == [1, 1.0] and points[-1] == [10_000, 1.0 / 10_000]
    gaps = {b[0] - a[0] for a, b in itertools.pairwise(points[:-1])}
    assert len(gaps) == 1  # one stride between the kept points


def test_storing_a_curve_twice_replaces_it(session_maker: sessionmaker[Session], job_id: str) -> None:
    with session_maker() as session:
        service.store_loss_curve(session, job_id, 1, [[1, 2.0]], 10)
        session.commit()
        service.store_loss_curve(session, job_id, 1, [[1, 2.0], [5, 1.0]], 10)
        session.commit()
        service.store_loss_curve(session, job_id, 2, [[1, 2.2]], 10)
        session.commit()
        curve = service.latest_loss_curve(session, job_id)
        assert curve is not None and (curve.attempt, curve.points) == (2, [[1, 2.2]])
        rows = session.scalar(
            select(func.count()).select_from(JobLossCurve).where(JobLossCurve.job_id == job_id)
        )
        assert rows == 2


def test_thinning_keeps_the_first_and_last_points_evenly() -> None:
    points = [[i, float(i)] for i in range(1001)]
    thinned = service.thin_points(points, 11)
    assert thinned == [[i, float(i)] for i in range(0, 1001, 100)]
