"""Schedules submit their suite when due (once, however many ticks overlap); quiet schedules, regressions and
change points become alert events. Real databases (both backends) and the real broker."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.alerts.events import change_point_events
from services.core.config import Settings
from services.core.db import utcnow
from services.devices.service import register_device
from services.jobs.models import Job
from services.jobs.suites import SUITES
from services.results.history import add_mark
from services.schedules.models import Schedule
from services.schedules.service import (
    ScheduleError,
    create_schedule,
    list_schedules,
    missing_data_events,
    remove_schedule,
    run_due,
)
from tests.support.jobs import tiny_spec
from tests.support.results import record, with_median


@pytest.fixture(autouse=True)
def _no_leftover_schedules(db_session: Session) -> Any:
    yield
    db_session.execute(delete(Schedule))
    db_session.commit()


def test_bad_schedules_are_refused_naming_what_is_accepted(db_session: Session) -> None:
    with pytest.raises(ScheduleError, match="suite 'nightly' is not known; accepted: standard, smoke"):
        create_schedule(db_session, suite="nightly", target="cpu", every_s=3600)
    with pytest.raises(ScheduleError, match="target 'tpu' is neither"):
        create_schedule(db_session, suite="smoke", target="tpu", every_s=3600)
    with pytest.raises(ScheduleError, match=r"every_s 1\.0 is out of range; accepted: 60 to"):
        create_schedule(db_session, suite="smoke", target="cpu", every_s=1.0)


def test_a_due_schedule_submits_its_suite_once_and_moves_to_its_next_time(
    db_session: Session, service_settings: Settings
) -> None:
    start = utcnow() - timedelta(hours=2, minutes=30)
    schedule = create_schedule(db_session, suite="smoke", target="cpu", every_s=3600, start_at=start)
    now = utcnow()
    ((ran, submitted),) = run_due(db_session, now=now)
    assert ran.id == schedule.id
    assert [job.spec_hash for job in submitted] == [spec.spec_hash() for _, spec in SUITES["smoke"]("cpu")]
    assert all(job.queue == "cpu" and job.status == "queued" for job in submitted)
    # Three periods were missed: the next run is the first due time after now, not three runs in a row.
    assert ran.next_run_at == start + timedelta(hours=3)
    assert ran.last_job_ids == [job.id for job in submitted]
    assert run_due(db_session, now=now) == []  # claimed: a second tick submits nothing
    assert len(run_due(db_session, now=start + timedelta(hours=3))) == 1
    assert remove_schedule(db_session, schedule.id) and list_schedules(db_session) == []


def test_a_scheduled_suite_on_a_device_without_float64_leaves_the_gradient_check_out(
    db_session: Session, service_settings: Settings
) -> None:
    mali = register_device(
        db_session,
        {
            "device": "opencl:0:0",
            "cpu_model": f"Scheduled board {uuid.uuid4().hex[:8]}",
            "backend": {"name": "opencl", "hardware": "Mali-G78 MP24", "float64": False},
        },
    )
    create_schedule(db_session, suite="smoke", target=mali.id, every_s=3600)
    ((_, submitted),) = run_due(db_session)
    # Spelt as its worker's fingerprint was (`opencl` alone is no device), and without the float64 entry.
    expected = [spec for _, spec in SUITES["smoke"]("opencl:0:0") if spec.dtype == "float32"]
    assert [job.spec_hash for job in submitted] == [spec.spec_hash() for spec in expected]
    assert len(submitted) == 5
    assert {(job.device, job.queue) for job in submitted} == {("opencl:0:0", mali.queue)}


def test_a_run_without_a_succeeded_job_for_a_period_is_missing_data(
    db_session: Session, service_settings: Settings
) -> None:
    schedule = create_schedule(db_session, suite="smoke", target="cpu", every_s=600)
    now = utcnow()
    run_due(db_session, now=now)
    assert missing_data_events(db_session, now=now + timedelta(seconds=599)) == []  # not a period yet
    (event,) = missing_data_events(db_session, now=now + timedelta(seconds=601))
    assert event.key == f"missing_data:{schedule.id}:{now.isoformat()}"
    assert event.kind == "missing_data"
    assert "none of its 6 jobs succeeded (queued)" in event.text


def _record(session: Session, device_id: str, medians: list[float], numpy: str | None = None) -> list[Job]:
    """One finished job of the tiny spec per median (on another NumPy version when `numpy` is given)."""

    def adjust(median: float) -> Callable[[dict[str, Any]], None]:
        def apply(document: dict[str, Any]) -> None:
            with_median(median)(document)
            if numpy is not None:
                document["fingerprint"]["numpy_version"] = numpy

        return apply

    return [record(session, tiny_spec(seed=1), device_id, adjust(median)) for median in medians]


def test_a_planted_step_in_a_devices_history_is_a_change_point_event(
    db_session: Session, service_settings: Settings
) -> None:
    fingerprint = {"cpu_model": f"Planted CPU {uuid.uuid4().hex[:6]}", "host": {"cpu_count": 2}}
    device = register_device(db_session, fingerprint)
    recorded = _record(db_session, device.id, [1000.0, 1004.0, 998.0, 1002.0, 1001.0, 999.0])
    recorded += _record(db_session, device.id, [930.0, 934.0, 928.0, 931.0, 933.0, 929.0])
    events = [e for e in change_point_events(db_session) if e.details["device_id"] == device.id]
    (event,) = events
    first_after = db_session.scalars(select(Job).where(Job.id == recorded[6].id)).one()
    assert event.kind == "change_point" and event.details["index"] == 6
    assert event.details["change"] == pytest.approx(930.5 / 1000.5 - 1)
    assert event.text.startswith(f"change point on {device.name}: train mlp synthetic batch 32: -7.0%")
    assert first_after.status == "succeeded"


def test_a_step_at_a_software_upgrade_is_a_cut_not_a_change_point(
    db_session: Session, service_settings: Settings
) -> None:
    fingerprint = {"cpu_model": f"Upgraded CPU {uuid.uuid4().hex[:6]}", "host": {"cpu_count": 2}}
    device = register_device(db_session, fingerprint)
    _record(db_session, device.id, [1000.0, 1004.0, 998.0, 1002.0, 1001.0, 999.0])
    _record(db_session, device.id, [930.0, 934.0, 928.0, 931.0, 933.0, 929.0], numpy="9.9.9")
    assert [e for e in change_point_events(db_session) if e.details["device_id"] == device.id] == []


def test_a_marked_shift_restarts_the_series(db_session: Session, service_settings: Settings) -> None:
    fingerprint = {"cpu_model": f"Marked CPU {uuid.uuid4().hex[:6]}", "host": {"cpu_count": 2}}
    device = register_device(db_session, fingerprint)
    _record(db_session, device.id, [1000.0, 1004.0, 998.0, 1002.0, 1001.0, 999.0])
    add_mark(db_session, device_id=device.id, note="BIOS update")
    _record(db_session, device.id, [930.0, 934.0, 928.0, 931.0, 933.0, 929.0])
    assert [e for e in change_point_events(db_session) if e.details["device_id"] == device.id] == []
