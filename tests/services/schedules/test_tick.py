"""The minute tick end to end: a due schedule submits its suite, and its quiet run is alerted to a real
webhook receiver once, however many ticks follow."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from services.alerts.models import AlertDelivery
from services.core.config import Settings
from services.core.db import utcnow
from services.schedules.models import Schedule
from services.schedules.service import create_schedule
from services.schedules.tick import tick
from tests.services.alerts.test_delivery import Receiver, receiver_factory  # noqa: F401 (fixture)


def test_the_tick_runs_due_schedules_and_alerts_a_quiet_run_once(
    session_maker: sessionmaker[Session],
    service_settings: Settings,
    receiver_factory: Any,  # noqa: F811
) -> None:
    receiver: Receiver = receiver_factory([])
    settings = service_settings.model_copy(update={"alert_webhook_urls": [receiver.url]})
    start = utcnow()
    with session_maker() as session:
        schedule = create_schedule(session, suite="smoke", target="cpu", every_s=600, start_at=start)
    try:
        first = tick(session_maker, settings, now=start)
        assert (first["schedules_run"], first["jobs_submitted"]) == (1, 6)
        later = start + timedelta(seconds=601)  # a period on, none of the six jobs ran (no worker here)
        second = tick(session_maker, settings, now=later)
        third = tick(session_maker, settings, now=later + timedelta(seconds=1))
        assert second["schedules_run"] == 1  # due again at start + 600 s
        missing = [b for b in receiver.bodies if b["event"]["kind"] == "missing_data"]
        assert len(missing) == 1 and missing[0]["event"]["schedule_id"] == schedule.id
        assert missing[0]["text"].startswith(
            f"bpbench: missing data: schedule {schedule.id[:8]} (smoke on cpu)"
        )
        assert third["alerts_stored"] == 0 or all(
            b["event"]["kind"] != "missing_data" for b in receiver.bodies[1:]
        )
    finally:
        with session_maker() as session:
            session.execute(delete(Schedule))
            session.execute(delete(AlertDelivery))
            session.commit()


def test_without_webhooks_the_tick_only_runs_schedules(
    session_maker: sessionmaker[Session], service_settings: Settings
) -> None:
    assert service_settings.alert_webhook_urls == []
    report = tick(session_maker, service_settings)
    assert report["events"] == 0 and report["alerts_stored"] == 0
