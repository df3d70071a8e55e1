"""`bpbench beat` for real: Celery beat sends the tick, a real worker runs it, a due schedule's suite is
submitted once and its jobs run."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from harness.processes import bpbench_command
from services.core.config import Settings
from services.jobs.models import Job
from services.schedules.models import Schedule
from services.schedules.service import create_schedule
from tests.support.jobs import wait_until
from tests.support.workers import WorkerProcess


def test_beat_ticks_and_a_worker_submits_the_due_schedule(
    service_settings: Settings,
    session_maker: sessionmaker[Session],
    worker_factory: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    worker = worker_factory()
    assert "bpbench.control" in worker.queues
    with session_maker() as session:
        schedule = create_schedule(session, suite="smoke", target=worker.device_id, every_s=3600)
    env = {
        **os.environ,
        "BPBENCH_DATABASE_URL": service_settings.database_url,
        "BPBENCH_BROKER_URL": service_settings.broker_url,
        "BPBENCH_DATA_DIR": str(tmp_path),
        "BPBENCH_TICK_INTERVAL_S": "1",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "beat.log"
    with log_path.open("wb") as log:
        beat = subprocess.Popen(
            [*bpbench_command(), "beat"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def submitted() -> list[str] | None:
            assert beat.poll() is None, log_path.read_text()
            with session_maker() as session:
                row = session.get(Schedule, schedule.id)
                return list(row.last_job_ids) if row is not None and row.last_job_ids else None

        job_ids = wait_until(submitted, 60, "the beat tick to submit the schedule's suite")

        def finished() -> list[Any] | None:
            with session_maker() as session:
                rows = session.scalars(select(Job).where(Job.id.in_(job_ids))).all()
                done = [job for job in rows if job.status in ("succeeded", "failed")]
                return done if len(done) == len(job_ids) else None

        jobs = wait_until(finished, 120, "the scheduled jobs to finish")
        assert len(jobs) == 6 and {job.target_device_id for job in jobs} == {worker.device_id}
        assert [job.status for job in jobs] == ["succeeded"] * 6, [job.error for job in jobs]
        with session_maker() as session:
            again = session.get(Schedule, schedule.id)
            assert again is not None and list(again.last_job_ids) == job_ids  # submitted once, not per tick
            assert (Path(tmp_path) / "celerybeat-schedule").exists() or any(
                tmp_path.glob("celerybeat-schedule*")
            )
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(timeout=30)
        with session_maker() as session:
            session.execute(delete(Schedule))
            session.commit()
    assert beat.returncode == 0, log_path.read_text()
