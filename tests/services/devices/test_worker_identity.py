"""A worker row belongs to one process: its stop and its beats count only for that process."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from services.core.db import utcnow
from services.devices.models import Worker
from services.devices.service import (
    WorkerNameTaken,
    free_worker_name,
    heartbeat,
    live_workers,
    mark_worker_stopped,
    register_device,
    register_worker,
)

FINGERPRINT = {"device": "cpu", "cpu_model": "identity test CPU"}


def register(session: Session, name: str, *, pid: int, dead_after_s: float | None = None) -> Worker:
    device = register_device(session, FINGERPRINT)
    return register_worker(
        session,
        name=name,
        device_id=device.id,
        device="cpu",
        queues=["cpu"],
        hostname="bench-01",
        pid=pid,
        dead_after_s=dead_after_s,
    )


def live_names(session: Session) -> set[str]:
    return {w.name for w in live_workers(session, dead_after_s=30)}


def test_a_stop_recorded_by_another_process_leaves_the_live_worker_alone(db_session: Session) -> None:
    name = f"cpu-{uuid.uuid4().hex[:8]}@bench-01"
    first = register(db_session, name, pid=100)

    stopped = mark_worker_stopped(db_session, name, pid=200, started_at=first.started_at)

    assert stopped is False
    assert name in live_names(db_session)


def test_a_stop_of_an_earlier_registration_of_the_same_pid_changes_nothing(db_session: Session) -> None:
    name = f"cpu-{uuid.uuid4().hex[:8]}@bench-01"
    earlier = register(db_session, name, pid=100).started_at

    register(db_session, name, pid=100)

    assert mark_worker_stopped(db_session, name, pid=100, started_at=earlier - timedelta(seconds=1)) is False
    assert name in live_names(db_session)


def test_a_heartbeat_of_a_live_process_clears_a_recorded_stop(db_session: Session) -> None:
    name = f"cpu-{uuid.uuid4().hex[:8]}@bench-01"
    row = register(db_session, name, pid=100)
    assert mark_worker_stopped(db_session, name, pid=100, started_at=row.started_at) is True
    assert name not in live_names(db_session)

    assert heartbeat(db_session, name, pid=100, started_at=row.started_at) is True

    assert name in live_names(db_session)


def test_a_heartbeat_of_a_process_that_no_longer_owns_the_row_is_not_recorded(db_session: Session) -> None:
    name = f"cpu-{uuid.uuid4().hex[:8]}@bench-01"
    row = register(db_session, name, pid=100)
    row.last_heartbeat = utcnow() - timedelta(seconds=120)
    db_session.commit()

    assert heartbeat(db_session, name, pid=999, started_at=row.started_at) is False
    assert name not in live_names(db_session)


def test_a_live_name_held_by_another_process_is_refused(db_session: Session) -> None:
    name = f"cpu-{uuid.uuid4().hex[:8]}@bench-01"
    register(db_session, name, pid=100, dead_after_s=15)

    with pytest.raises(WorkerNameTaken, match=r"held by a live worker \(pid 100 on bench-01"):
        register(db_session, name, pid=200, dead_after_s=15)

    row = db_session.get(Worker, name, populate_existing=True)
    assert row is not None and row.pid == 100


def test_the_name_of_a_dead_worker_can_be_taken_over(db_session: Session) -> None:
    name = f"cpu-{uuid.uuid4().hex[:8]}@bench-01"
    row = register(db_session, name, pid=100, dead_after_s=15)
    row.last_heartbeat = utcnow() - timedelta(seconds=60)
    db_session.commit()

    taken = register(db_session, name, pid=200, dead_after_s=15)

    assert (taken.pid, taken.stopped_at) == (200, None)


def test_a_default_name_held_by_a_live_worker_gets_the_first_free_suffix(db_session: Session) -> None:
    base = f"cpu@host-{uuid.uuid4().hex[:8]}"
    assert free_worker_name(db_session, base, dead_after_s=15) == base
    register(db_session, base, pid=100)
    register(db_session, f"{base}-2", pid=101)

    assert free_worker_name(db_session, base, dead_after_s=15) == f"{base}-3"
