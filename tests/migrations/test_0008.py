"""Migration 0008: `jobs.device` and `workers.device` take the registry's longest spellings (40 characters),
keep every row (and the rows referencing the copied jobs on SQLite), and a downgrade refuses to cut one."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import func, select, table

from services.core.db import make_engine, utcnow
from services.core.migrate import alembic_config, current_revision
from services.devices.models import Device, Worker
from services.joblogs.models import JobLogLine
from services.jobs.models import Job

DEVICE = "0008deadbeef"
BEFORE, LONG = "00000000-0000-4000-8000-000000000081", "00000000-0000-4000-8000-000000000082"
SYCL = "oneapi:level_zero:gpu:0"


def _job(job_id: str, device: str, device_class: str) -> dict[str, object]:
    return {
        "id": job_id,
        "spec": {"kind": "train", "device": device},
        "spec_hash": "8" * 16,
        "kind": "train",
        "device": device,
        "device_class": device_class,
        "queue": device_class,
        "status": "queued",
        "updated_at": utcnow(),
    }


def test_0008_widens_the_device_columns_keeping_every_row_and_refuses_to_downgrade_over_a_long_one(
    empty_database_url: str,
) -> None:
    command.upgrade(alembic_config(empty_database_url), "0007")
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                Device.__table__.insert(),
                [{"id": DEVICE, "device_class": "cpu", "vendor": "Intel", "name": "Migrated Xeon"}
                 | {"software": {}, "fingerprint": {}}],
            )  # fmt: skip
            connection.execute(Job.__table__.insert(), [_job(BEFORE, "gpu:7", "gpu")])
            line = {"job_id": BEFORE, "attempt": 1, "level": "INFO", "logger": "test", "message": "kept"}
            connection.execute(JobLogLine.__table__.insert(), [{**line, "logged_at": utcnow()}])

        command.upgrade(alembic_config(empty_database_url), "0008")

        assert current_revision(empty_database_url) == "0008"
        worker = {"name": "w@test", "device_id": DEVICE, "device": SYCL, "queues": ["oneapi"]}
        with engine.begin() as connection:
            connection.execute(Job.__table__.insert(), [_job(LONG, SYCL, "oneapi")])
            connection.execute(Worker.__table__.insert(), [{**worker, "hostname": "h", "pid": 1}])
        with engine.connect() as connection:
            devices = dict(connection.execute(select(Job.id, Job.device)).all())
            logs = connection.scalar(select(func.count()).select_from(table("job_logs")))
            assert (devices, logs) == ({BEFORE: "gpu:7", LONG: SYCL}, 1)
            assert connection.scalar(select(Worker.device)) == SYCL

        with pytest.raises(RuntimeError, match=r"1 row\(s\) of jobs name a device longer than 16 characters"):
            command.downgrade(alembic_config(empty_database_url), "0007")

        with engine.begin() as connection:
            connection.execute(Worker.__table__.delete())
            connection.execute(Job.__table__.delete().where(Job.id == LONG))
        command.downgrade(alembic_config(empty_database_url), "0007")
        assert current_revision(empty_database_url) == "0007"
        with engine.connect() as connection:
            assert connection.scalar(select(Job.device)) == "gpu:7"
            assert connection.scalar(select(func.count()).select_from(table("job_logs"))) == 1
    finally:
        engine.dispose()
