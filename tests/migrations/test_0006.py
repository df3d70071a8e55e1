"""Migration 0006: `jobs.heartbeat_at`, backfilled from `updated_at`, and its downgrade keeps every row."""

from __future__ import annotations

from datetime import timedelta

from alembic import command
from sqlalchemy import func, inspect, select, table

from services.core.db import make_engine, utcnow
from services.core.migrate import alembic_config, current_revision
from services.devices.models import Device
from services.jobs.models import Job
from services.results.models import Result

DEVICE = "mig5cpu00000001"
RUNNING, DONE = "00000000-0000-4000-8000-000000000051", "00000000-0000-4000-8000-000000000052"


def _job(job_id: str, status: str, updated_at: object) -> dict[str, object]:
    return {
        "id": job_id,
        "spec": {"kind": "train"},
        "spec_hash": "5" * 16,
        "kind": "train",
        "device": "cpu",
        "device_class": "cpu",
        "queue": "cpu",
        "status": status,
        "device_id": DEVICE,
        "worker_name": "w@test",
        "updated_at": updated_at,
    }


def test_0006_backfills_each_jobs_heartbeat_from_its_updated_at_and_downgrades_keeping_every_row(
    empty_database_url: str,
) -> None:
    command.upgrade(alembic_config(empty_database_url), "0005")
    beat = utcnow() - timedelta(minutes=5)
    finished = utcnow() - timedelta(minutes=1)
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            # Exactly the columns a store at 0005 has.
            device = {"id": DEVICE, "device_class": "cpu", "vendor": "Intel", "name": "Migrated Xeon"}
            connection.execute(Device.__table__.insert(), [{**device, "software": {}, "fingerprint": {}}])
            connection.execute(
                Job.__table__.insert(), [_job(RUNNING, "running", beat), _job(DONE, "succeeded", finished)]
            )
            connection.execute(
                Result.__table__.insert(),
                [
                    {
                        "job_id": DONE,
                        "device_id": DEVICE,
                        "spec_hash": "5" * 16,
                        "kind": "train",
                        "trial_count": 0,
                        "metrics": {},
                        "statistics": {},
                        "fingerprint": {},
                    }
                ],
            )

        command.upgrade(alembic_config(empty_database_url), "0006")

        assert current_revision(empty_database_url) == "0006"
        with engine.connect() as connection:
            heartbeats = dict(connection.execute(select(Job.id, Job.heartbeat_at)).all())
        # The reconciler judges a job running at the upgrade by what it read before: its updated_at.
        assert heartbeats == {RUNNING: beat, DONE: finished}

        command.downgrade(alembic_config(empty_database_url), "0005")

        with engine.connect() as connection:
            assert "heartbeat_at" not in {c["name"] for c in inspect(connection).get_columns("jobs")}
            counts = [
                connection.scalar(select(func.count()).select_from(table(t))) for t in ("jobs", "results")
            ]
            # SQLite's batch mode would have copied `jobs`, cascading its results away.
            assert counts == [2, 1]
        command.upgrade(alembic_config(empty_database_url), "0006")
        assert current_revision(empty_database_url) == "0006"
    finally:
        engine.dispose()
