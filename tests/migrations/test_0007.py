"""Migration 0007: `job_logs` and `job_loss_curves` are added beside a store's jobs, go with their job, and
its downgrade drops only them."""

from __future__ import annotations

from alembic import command
from sqlalchemy import delete, func, inspect, select, table

from services.core.db import make_engine, utcnow
from services.core.migrate import alembic_config, current_revision, upgrade_to_head
from services.joblogs.models import JobLogLine, JobLossCurve
from services.jobs.models import Job

JOB = "00000000-0000-4000-8000-000000000071"


def test_0007_adds_the_log_tables_whose_rows_go_with_their_job_and_downgrades_to_the_jobs_alone(
    empty_database_url: str,
) -> None:
    command.upgrade(alembic_config(empty_database_url), "0006")
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            job = {
                "id": JOB,
                "spec": {"kind": "train"},
                "spec_hash": "7" * 16,
                "kind": "train",
                "device": "cpu",
                "device_class": "cpu",
                "queue": "cpu",
                "status": "running",
                "attempts": 1,
                "updated_at": utcnow(),
            }
            connection.execute(Job.__table__.insert(), [job])

        command.upgrade(alembic_config(empty_database_url), "0007")

        assert current_revision(empty_database_url) == "0007"
        line = {"job_id": JOB, "attempt": 1, "level": "INFO", "logger": "test", "message": "started"}
        with engine.begin() as connection:
            connection.execute(JobLogLine.__table__.insert(), [{**line, "logged_at": utcnow()}])
            curve = {"job_id": JOB, "attempt": 1, "points": [[1, 2.3]], "total_steps": 10}
            connection.execute(JobLossCurve.__table__.insert(), [{**curve, "updated_at": utcnow()}])
        with engine.connect() as connection:
            stored = (
                connection.scalar(select(JobLogLine.message)),
                connection.scalar(select(JobLossCurve.points)),
            )
        assert stored == ("started", [[1, 2.3]])

        command.downgrade(alembic_config(empty_database_url), "0006")

        with engine.connect() as connection:
            names = set(inspect(connection).get_table_names())
            assert {"job_logs", "job_loss_curves"} & names == set()
            assert connection.scalar(select(func.count()).select_from(table("jobs"))) == 1

        upgrade_to_head(empty_database_url)
        with engine.begin() as connection:
            connection.execute(JobLogLine.__table__.insert(), [{**line, "logged_at": utcnow()}])
            connection.execute(delete(Job.__table__).where(Job.__table__.c.id == JOB))
            # ON DELETE CASCADE: a job's lines do not outlive it.
            assert connection.scalar(select(func.count()).select_from(JobLogLine.__table__)) == 0
    finally:
        engine.dispose()
